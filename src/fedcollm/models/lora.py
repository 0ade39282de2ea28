"""LoRA adapters through PEFT, and the adapter as an ordered list of named arrays.

The list of ``(name, array)`` pairs is what federation ships: the names are PEFT's state-dict keys with
the adapter name stripped (so they match across processes), the order is the state dict's, and
``set_adapter_arrays`` refuses anything that does not fit exactly (missing or extra keys, wrong shapes,
NaN/Inf) with an error naming the key, before touching the model. Saved adapters are read through the
same check (``load_adapter``, ``load_adapter_model``), and every way a saved adapter can be broken
(unreadable JSON or safetensors, wrong rank, unknown target module) becomes one AdapterError naming
the file, not a library traceback or a PEFT warning.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors import SafetensorError

from ..config import LoraSpec  # defined with the config (no torch there); re-exported here

NamedArrays = list[tuple[str, np.ndarray]]


class AdapterError(ValueError):
    """An adapter update that does not fit the model (keys, shapes, non-finite values)."""


def attach_lora(model, spec: LoraSpec, adapter_name: str = "default", seed: int = 0) -> PeftModel:
    """Freeze the base and wrap it with a fresh LoRA adapter (B = 0, so the output is unchanged)."""
    for p in model.parameters():
        p.requires_grad_(False)
    cfg = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=list(spec.targets),
                     task_type="CAUSAL_LM", bias="none")
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # the A matrices are random: same seed, same initial adapter everywhere
        return _wrap(model, cfg, adapter_name)


def _wrap(model, config: LoraConfig, adapter_name: str = "default") -> PeftModel:
    """``get_peft_model``, quietly: PEFT 0.21 reads transformers' deprecated ``is_gradient_checkpointing``
    (transformers >= 5.24 warns on every wrap), library-to-library noise a user can do nothing about, so
    only that warning is muted; every fresh and every loaded adapter is wrapped here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config, adapter_name=adapter_name)


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
    model: PeftModel, arrays: Sequence[tuple[str, np.ndarray]], adapter_name: str = "default", who: str = "update"
) -> None:
    """Load named arrays into the adapter in place, after checking they fit."""
    current = get_peft_model_state_dict(model, adapter_name=adapter_name)
    check_adapter_arrays([(k, v) for k, v in current.items()], arrays, who)
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


def read_adapter_arrays(adapter_dir: str | Path) -> NamedArrays:
    """A saved adapter's weights as float32 arrays; a missing or truncated file is an AdapterError naming it."""
    from safetensors.torch import load_file

    path = Path(adapter_dir) / "adapter_model.safetensors"
    if not path.is_file():
        raise AdapterError(f"no PEFT adapter at {adapter_dir} (missing adapter_model.safetensors)")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:  # truncated or not safetensors at all
        raise AdapterError(f"{path}: not a readable safetensors file ({_first_line(exc)})") from None
    return [(k, v.float().numpy()) for k, v in state.items()]


def load_adapter(model: PeftModel, adapter_dir: str | Path, adapter_name: str = "default") -> None:
    """Read a saved adapter's weights into an existing PEFT model (no second copy of the base)."""
    set_adapter_arrays(model, read_adapter_arrays(adapter_dir), adapter_name, who=str(adapter_dir))


def read_adapter_config(adapter_dir: str | Path) -> LoraConfig:
    """The LoRA config saved beside an adapter (``adapter_config.json``), or an AdapterError naming the file."""
    path = Path(adapter_dir) / "adapter_config.json"
    if not path.is_file():
        raise AdapterError(f"no PEFT adapter at {adapter_dir} (missing adapter_config.json)")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise AdapterError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise AdapterError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise AdapterError(f"{path}: not a PEFT adapter config (a JSON object)")
    if data.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"{path}: a {data.get('peft_type')} adapter; only LoRA adapters are supported")
    try:
        return LoraConfig.from_pretrained(str(adapter_dir))
    except (TypeError, ValueError, KeyError, OSError) as exc:
        raise AdapterError(f"{path}: not a valid LoRA config ({_first_line(exc)})") from None


def load_adapter_model(model, adapter_dir: str | Path) -> PeftModel:
    """Wrap a frozen base with a saved adapter, checked as strictly as a federated update.

    ``PeftModel.from_pretrained`` only warns when the saved keys do not match the model (the adapter
    would then silently be partly or wholly missing) and loads NaN weights as they are; here the
    adapter is built from its config and its weights go through ``set_adapter_arrays``: the same key,
    shape and finiteness check as every update the server receives.
    """
    config = read_adapter_config(adapter_dir)
    arrays = read_adapter_arrays(adapter_dir)  # before touching the model: a broken file changes nothing
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        peft_model = _wrap(model, config)
    except ValueError as exc:  # PEFT: target modules not in this model, or of a type LoRA cannot wrap
        raise AdapterError(f"{Path(adapter_dir) / 'adapter_config.json'}: does not fit this model "
                           f"({_first_line(exc)})") from None
    set_adapter_arrays(peft_model, arrays, who=str(adapter_dir))
    return peft_model.eval()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
