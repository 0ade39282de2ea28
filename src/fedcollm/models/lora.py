"""LoRA adapters through PEFT, and the adapter as an ordered list of named arrays.

The list of ``(name, array)`` pairs is what federation ships: the names are PEFT's state-dict keys with
the adapter name stripped (so they match across processes), the order is the state dict's, and
``set_adapter_arrays`` refuses anything that does not fit exactly (missing or extra keys, wrong shapes,
NaN/Inf) with an error naming the key, before touching the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

NamedArrays = list[tuple[str, np.ndarray]]


class AdapterError(ValueError):
    """An adapter update that does not fit the model (keys, shapes, non-finite values)."""


@dataclass
class LoraSpec:
    """LoRA hyper-parameters for one model (the paper's defaults are PEFT's q/v projections)."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


def attach_lora(model, spec: LoraSpec, adapter_name: str = "default", seed: int = 0) -> PeftModel:
    """Freeze the base and wrap it with a fresh LoRA adapter (B = 0, so the output is unchanged)."""
    for p in model.parameters():
        p.requires_grad_(False)
    cfg = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=list(spec.targets),
                     task_type="CAUSAL_LM", bias="none")
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # the A matrices are random: same seed, same initial adapter everywhere
        return get_peft_model(model, cfg, adapter_name=adapter_name)


def get_adapter_arrays(model: PeftModel, adapter_name: str = "default") -> NamedArrays:
    """The adapter's weights as float32 numpy arrays, in state-dict order."""
    state = get_peft_model_state_dict(model, adapter_name=adapter_name)
    return [(k, v.detach().float().cpu().numpy().copy()) for k, v in state.items()]


def check_adapter_arrays(reference: NamedArrays, update: Sequence[tuple[str, np.ndarray]], who: str = "update") -> None:
    """Raise AdapterError unless ``update`` has exactly ``reference``'s keys and shapes and finite values."""
    ref = dict(reference)
    got = dict(update)
    missing, extra = sorted(set(ref) - set(got)), sorted(set(got) - set(ref))
    if missing or extra:
        raise AdapterError(f"{who}: adapter keys differ (missing {missing[:3]}, unexpected {extra[:3]})")
    for k, v in got.items():
        if tuple(np.shape(v)) != tuple(ref[k].shape):
            raise AdapterError(f"{who}: {k} has shape {tuple(np.shape(v))}, expected {tuple(ref[k].shape)}")
        if not np.all(np.isfinite(v)):
            raise AdapterError(f"{who}: {k} contains NaN or Inf")


def set_adapter_arrays(
    model: PeftModel, arrays: Sequence[tuple[str, np.ndarray]], adapter_name: str = "default"
) -> None:
    """Load named arrays into the adapter in place, after checking they fit."""
    current = get_peft_model_state_dict(model, adapter_name=adapter_name)
    check_adapter_arrays([(k, v) for k, v in current.items()], arrays)
    state = {k: torch.as_tensor(np.asarray(v)).to(current[k].dtype) for k, v in arrays}
    result = set_peft_model_state_dict(model, state, adapter_name=adapter_name)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise AdapterError(f"PEFT did not place adapter keys {unexpected[:3]}")


def count_parameters(model) -> dict[str, int]:
    """Trainable (adapter) and total parameters; the adapter's share is the paper's Table 3."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "total": total, "base": total - trainable}


def arrays_nbytes(arrays: Sequence[tuple[str, np.ndarray]]) -> int:
    return int(sum(np.asarray(v).nbytes for _, v in arrays))


def save_adapter(model: PeftModel, out_dir: str | Path) -> Path:
    """PEFT's own format (adapter_config.json + adapter_model.safetensors): PeftModel.from_pretrained loads it."""
    out = Path(out_dir)
    model.save_pretrained(out)
    return out


def load_adapter(model: PeftModel, adapter_dir: str | Path, adapter_name: str = "default") -> None:
    """Read a saved adapter's weights into an existing PEFT model (no second copy of the base)."""
    from safetensors.torch import load_file

    path = Path(adapter_dir) / "adapter_model.safetensors"
    if not path.is_file():
        raise AdapterError(f"no PEFT adapter at {adapter_dir} (missing adapter_model.safetensors)")
    state = load_file(str(path))
    set_adapter_arrays(model, [(k, v.float().numpy()) for k, v in state.items()], adapter_name)
