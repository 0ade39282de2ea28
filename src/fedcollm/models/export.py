"""Export a tuned model for serving: the base with its adapter merged (HF folder), or GGUF for llama.cpp.

Three formats, because the places a tuned model goes want different things:

* ``hf``: the base with the adapter merged by PEFT (``merge_and_unload``), saved as safetensors with its
  tokenizer and chat template: a folder ``AutoModelForCausalLM.from_pretrained`` loads with no PEFT.
* ``gguf``: the merged model as one llama.cpp file (bf16, f16, f32 or q8_0; ``gguf_io``).
* ``gguf-lora``: the adapter alone as a llama.cpp LoRA file, a few MB that a client ships on top of the base
  GGUF it already has (``llama-cli -m base.gguf --lora adapter.gguf``).

The merge is done in fp32 and rounded once to the output type, so a bf16 export holds the nearest bf16 of
W + (alpha/r)·B·A. Every output records what it was made from (base, run, round, the adapter's sha256):
``fedcollm_export.json`` in a folder, ``fedcollm.export.*`` keys in a GGUF. Outputs are written under a
``.partial`` name and renamed when complete, and an existing output is never replaced.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import ConfigError, check_output_folder
from . import gguf_io
from .lora import AdapterError, check_adapter_arrays, load_adapter_model, read_adapter_arrays, read_adapter_config
from .offline import ModelSourceError
from .sources import LOAD_ERRORS, load_model, resolve_model

FORMATS = ("hf", "gguf", "gguf-lora")
#: what each format can hold; the first is its default. q8_0 rows are blocks of 32, so a LoRA's B (rows of r)
#: cannot be q8_0, and an HF folder holds plain floats only
QUANTS = {"hf": ("bf16", "f16", "f32"), "gguf": ("bf16", "f16", "f32", "q8_0"), "gguf-lora": ("f32", "f16", "bf16")}
DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}
PROVENANCE_FILE = "fedcollm_export.json"


@dataclass(frozen=True)
class ExportSource:
    """What is exported: a base model argument and a PEFT adapter folder, and where the adapter came from."""

    base: str
    adapter: Path
    role: str | None = None
    run: str | None = None
    round: int | None = None


def check_request(fmt: str, quant: str | None, out: str | Path) -> str:
    """The quantization to write (the format's default when None); refuses before anything is loaded."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    quant = quant or QUANTS[fmt][0]
    if quant not in QUANTS[fmt]:
        raise ConfigError(f"--quant {quant} is not offered for --format {fmt}; choose from {', '.join(QUANTS[fmt])}")
    out = Path(out)
    if out.exists() or out.is_symlink():
        raise ConfigError(f"--out {out} already exists; an export never replaces anything (remove it or choose "
                          "another path)")
    if fmt != "hf" and out.suffix != ".gguf":
        raise ConfigError(f"--out {out}: a --format {fmt} output is one file named *.gguf")
    check_output_folder(out.parent, "--out")
    return quant


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def provenance(src: ExportSource, fmt: str, quant: str) -> dict:
    """What an export was made from, so a served file can be traced back to its run and round."""
    try:
        version = importlib.metadata.version("fedcollm")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        version = "unknown"
    return {"base": src.base, "role": src.role, "run": src.run, "round": src.round, "adapter": str(src.adapter),
            "adapter_sha256": sha256(Path(src.adapter) / "adapter_model.safetensors"),
            "format": fmt, "quant": quant, "merged_in": "float32" if fmt != "gguf-lora" else None,
            "fedcollm_version": version, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _display_name(src: ExportSource) -> str:
    base = Path(src.base).name if not src.base.endswith(".gguf") else Path(src.base).stem
    return f"{base} + FedCoLLM {src.role or 'tuned'} adapter" + (f" (round {src.round})" if src.round else "")


def _config(src: ExportSource, cache):
    from transformers import AutoConfig

    where = resolve_model(src.base, cache)
    try:
        return AutoConfig.from_pretrained(where)
    except LOAD_ERRORS as exc:
        raise ModelSourceError(f"cannot load model {src.base!r} from {where}: {str(exc).splitlines()[0]}") from None


def merged_model(src: ExportSource, cache=None):
    """(base with the adapter merged, in fp32; tokenizer). The adapter is checked against the base first.

    transformers' loading bar is off here: a refusal after the load (an f16 overflow) stays one line."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model, tok = load_model(src.base, dtype=torch.float32, cache=cache)
    finally:
        if shown:
            hf_logging.enable_progress_bar()
    return load_adapter_model(model, src.adapter).merge_and_unload(), tok


def check_fit(src: ExportSource, cache=None):
    """(PEFT model on the meta device, LoRA config, adapter arrays, base config): the adapter checked against
    the base's modules and shapes without loading any weights, so a wrong base is refused in one line
    before anything is loaded or written."""
    from peft import get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    from .lora import _wrap

    config = _config(src, cache)
    lcfg = read_adapter_config(src.adapter)
    lcfg.base_model_name_or_path = None  # the trained-on path is checked by shapes here, not by name (no warning)
    arrays = read_adapter_arrays(src.adapter)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    try:
        peft_model = _wrap(model, lcfg)
    except ValueError as exc:
        raise AdapterError(f"{Path(src.adapter) / 'adapter_config.json'}: does not fit this model "
                           f"({str(exc).splitlines()[0][:200]})") from None
    shapes = get_peft_model_state_dict(peft_model)
    check_adapter_arrays([(k, np.broadcast_to(np.float32(0), tuple(v.shape))) for k, v in shapes.items()],
                         arrays, who=str(src.adapter))
    return peft_model, lcfg, arrays, config


def lora_pairs(src: ExportSource, cache=None) -> tuple[list[tuple[str, np.ndarray, np.ndarray]], float, object]:
    """(module, A, B) per adapted layer, alpha, and the base's config. B is scaled so that llama.cpp's
    alpha / r gives PEFT's scaling of each layer (they differ only for rsLoRA or per-layer rank/alpha
    patterns)."""
    from peft.tuners.lora import LoraLayer

    peft_model, lcfg, arrays, config = check_fit(src, cache)
    where = Path(src.adapter) / "adapter_config.json"
    if lcfg.use_dora or lcfg.lora_bias or lcfg.bias != "none":
        raise AdapterError(f"{where}: DoRA and LoRA biases have no llama.cpp LoRA form; export --format gguf")
    left = dict(arrays)
    pairs = []
    for name, layer in peft_model.base_model.model.named_modules():
        if isinstance(layer, LoraLayer) and "default" in layer.lora_A:
            a = left.pop(f"base_model.model.{name}.lora_A.weight")
            b = left.pop(f"base_model.model.{name}.lora_B.weight")
            factor = layer.scaling["default"] * layer.r["default"] / lcfg.lora_alpha
            pairs.append((name, a, b if math.isclose(factor, 1.0, rel_tol=1e-12) else b * np.float32(factor)))
    if left:
        raise AdapterError(f"{src.adapter}: {sorted(left)[0]} is not a LoRA A/B matrix of a linear layer; "
                           "llama.cpp's LoRA format holds only those (export --format gguf instead)")
    return pairs, float(lcfg.lora_alpha), config


def _export_hf(src: ExportSource, out: Path, quant: str, meta: dict, cache) -> Path:
    model, tok = merged_model(src, cache)
    if quant == "f16":
        for key, value in model.state_dict().items():
            gguf_io.check_f16_range(value.numpy(), gguf_io.TENSOR_TYPES["f16"], key)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.to(DTYPES[quant]).save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / PROVENANCE_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _export_gguf(src: ExportSource, out: Path, quant: str, meta: dict, cache) -> Path:
    model, tok = merged_model(src, cache)
    state, config = dict(model.state_dict()), model.config
    del model  # the state dict is now the only reference: each tensor is freed once written
    return gguf_io.write_model(state, config, tok, out, quant, _display_name(src), meta)


def export(src: ExportSource, fmt: str, out: str | Path, quant: str | None = None, cache=None) -> Path:
    """Write ``src`` as ``fmt`` at ``out`` (never replacing anything); returns ``out``."""
    quant = check_request(fmt, quant, out)
    out = Path(out)
    if fmt != "hf":  # every refusal before anything is written
        gguf_io.architecture(_config(src, cache))
    if fmt == "gguf-lora":
        pairs, alpha, config = lora_pairs(src, cache)
    else:
        _, _, _, config = check_fit(src, cache)
    meta = provenance(src, fmt, quant)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "gguf-lora":
        return gguf_io.write_lora(pairs, alpha, config, out, quant, _display_name(src), meta)
    return (_export_hf if fmt == "hf" else _export_gguf)(src, out, quant, meta, cache)
