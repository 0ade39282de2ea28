"""Where a model comes from: a built-in offline name, a local HF folder, a ``.gguf`` file, or a hub id.

Every model argument of the CLI and the config goes through ``resolve_model``, so all commands accept
the same four forms and fail with the same one-line errors.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from safetensors import SafetensorError

from ..config import ConfigError, LoraSpec
from . import offline
from .offline import ModelSourceError

#: What transformers raises for an unreadable model folder: OSError (missing files), ValueError and its
#: JSONDecodeError/UnicodeDecodeError (bad config or tokenizer JSON), SafetensorError (truncated weights).
LOAD_ERRORS = (OSError, ValueError, SafetensorError)

log = logging.getLogger(__name__)


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "~"))


def resolve_model(spec: str, cache: str | Path | None = None, prepare: bool = True) -> str:
    """A path (or hub id) that ``from_pretrained`` can load; builds built-in and GGUF models on first use."""
    if spec in offline.BUILTIN:
        if not prepare and not offline.is_ready(spec, cache):
            raise ModelSourceError(f"built-in model {spec} is not prepared: run `fedcollm models prepare {spec}`")
        return str(offline.prepare(spec, cache))
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise ModelSourceError(f"GGUF file {path} does not exist")
        key = hashlib.sha256(f"{path.resolve()}:{path.stat().st_size}".encode()).hexdigest()[:12]
        out = offline.cache_dir(cache) / "models" / f"gguf-{path.stem}-{key}"
        if not (out / offline.MANIFEST).is_file():
            offline.dequantize_gguf(path, out)
        return str(out)
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"{path} is not a Hugging Face model folder (no config.json)")
        return str(path)
    if _looks_like_hub_id(spec):
        return spec
    raise ModelSourceError(
        f"unknown model {spec!r}: not a built-in name ({', '.join(offline.BUILTIN)}), an existing folder, "
        "a .gguf file or a hub id (owner/name)"
    )


def load_tokenizer(spec: str, cache: str | Path | None = None):
    """The tokenizer alone (cheap: checks a model pair before any weights are loaded)."""
    from transformers import AutoTokenizer

    where = resolve_model(spec, cache)
    try:
        return AutoTokenizer.from_pretrained(where)
    except LOAD_ERRORS as exc:
        raise ModelSourceError(f"cannot load the tokenizer of {spec!r} from {where}: {str(exc).splitlines()[0]}") \
            from None


def load_model(spec: str, dtype: torch.dtype = torch.bfloat16, cache: str | Path | None = None):
    """(frozen model in eval mode, tokenizer) for any model source."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where = resolve_model(spec, cache)
    try:
        tokenizer = AutoTokenizer.from_pretrained(where)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype)
    except LOAD_ERRORS as exc:
        raise ModelSourceError(f"cannot load model {spec!r} from {where}: {str(exc).splitlines()[0]}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval(), tokenizer


def check_same_tokenizer(tok_a, tok_b, name_a: str, name_b: str, vocab_a: int | None = None,
                         vocab_b: int | None = None) -> None:
    """Knowledge distillation compares token distributions, so the pair must share one vocabulary."""
    if tok_a.get_vocab() != tok_b.get_vocab():
        raise ModelSourceError(
            f"tokenizers differ: {name_a} ({len(tok_a)} tokens) and {name_b} ({len(tok_b)} tokens); "
            "FedCoLLM's KD needs an LLM and SLM of one family with the same tokenizer"
        )
    if vocab_a is not None and vocab_b is not None and vocab_a != vocab_b:
        raise ModelSourceError(f"output vocab sizes differ: {name_a} has {vocab_a}, {name_b} has {vocab_b}")


def check_model_files(spec: str, cache: str | Path | None = None) -> str:
    """Read a local model's config and every weight file's header: cheap, and a truncated download or
    copy fails here, before a run folder exists, rather than when the weights are loaded mid-run."""
    from transformers import AutoConfig

    where = resolve_model(spec, cache)
    folder = Path(where)
    if not folder.is_dir():  # a hub id: nothing local to check
        return where
    try:
        AutoConfig.from_pretrained(where)
    except LOAD_ERRORS as exc:
        raise ModelSourceError(f"cannot load model {spec!r} from {where}: {str(exc).splitlines()[0]}") from None
    from safetensors import safe_open

    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), "pt"):  # checks the header and that the file holds all it declares
                pass
        except (SafetensorError, OSError) as exc:
            raise ModelSourceError(f"model {spec!r}: weights file {path} is corrupt or truncated "
                                   f"({str(exc).splitlines()[0]}); copy or prepare it again") from None
    return where


def check_lora_targets(spec: str, lora: LoraSpec, key: str = "lora.targets", cache: str | Path | None = None) -> None:
    """Every LoRA target must name a module of this model that PEFT can wrap.

    PEFT refuses only when no target matches at all, and only once the weights are loaded; a typo beside
    a valid target is silently dropped. The model is built on the meta device here (no weights, no
    memory) so each target is checked before a run starts.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from .lora import attach_lora

    where = resolve_model(spec, cache)
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(where))
    except LOAD_ERRORS as exc:
        raise ModelSourceError(f"cannot load model {spec!r} from {where}: {str(exc).splitlines()[0]}") from None
    names = [n for n, _ in model.named_modules()]
    unknown = [t for t in lora.targets if not any(n == t or n.endswith(f".{t}") for n in names)]
    if unknown:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ConfigError(f"{key}: {', '.join(unknown)} names no module of {spec} "
                          f"(its linear layers: {', '.join(linear)})")
    try:
        with torch.device("meta"):
            attach_lora(model, lora)
    except ValueError as exc:  # e.g. a target that is a whole block, not a layer LoRA can wrap
        raise ConfigError(f"{key}: {str(exc).splitlines()[0][:200]}") from None
    except (RuntimeError, TypeError, OverflowError) as exc:  # a rank or alpha too large for torch (r = 2**62)
        prefix = key.rsplit(".", 1)[0]
        raise ConfigError(f"{prefix}.r={lora.r}, {prefix}.alpha={lora.alpha}: no adapter of that size can be "
                          f"built ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from None
