"""Try a (tuned) model from the command line: one prompt through its chat template, the reply streamed.

Greedy by default, so the same prompt gives the same reply every time, in transformers as in llama.cpp
(``llama-cli --temp 0``), and an export can be checked against its adapter by eye. ``temperature > 0``
samples (nucleus ``top_p``, seeded). Only what the caller asks for is applied: the model's own
``generation_config`` sampling defaults (a top-k, a repetition penalty) are not, because they would make
"greedy" mean something different for every model folder; its end-of-sequence ids are kept.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .config import ConfigError

log = logging.getLogger(__name__)


def prompt_ids(tok, prompt: str, chat: bool = True) -> list[int]:
    """The prompt as the model expects it: one user turn in its chat template, or as it is."""
    if chat and getattr(tok, "chat_template", None):
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                       add_generation_prompt=True)
        return tok(text, add_special_tokens=False)["input_ids"]
    if chat:
        log.warning("the tokenizer has no chat template; the prompt is used as it is")
    return tok(prompt)["input_ids"]


def generation_config(model, tok, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0):
    """A config with exactly the asked decoding, and the model's stop and pad ids."""
    from transformers import GenerationConfig

    own = getattr(model, "generation_config", None)
    eos = getattr(own, "eos_token_id", None)
    eos = eos if eos is not None else tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else (eos[0] if isinstance(eos, list) else eos)
    sample = temperature > 0
    return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=sample, eos_token_id=eos, pad_token_id=pad,
                            temperature=temperature if sample else 1.0, top_p=top_p if sample else 1.0,
                            top_k=0 if sample else None, repetition_penalty=1.0)


def generate(model, tok, prompt: str, *, max_new_tokens: int = 128, temperature: float = 0.0, top_p: float = 1.0,
             seed: int = 0, chat: bool = True, stream: bool = True) -> str:
    """The model's reply to ``prompt`` (streamed to stdout as it is made when ``stream``)."""
    from transformers import TextStreamer

    if max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ConfigError(f"--temperature must be >= 0 (0 = greedy), got {temperature}")
    if not 0 < top_p <= 1:
        raise ConfigError(f"--top-p must be in (0, 1], got {top_p}")
    ids = torch.tensor([prompt_ids(tok, prompt, chat)], device=model.device)
    config = generation_config(model, tok, max_new_tokens, temperature, top_p)
    streamer = TextStreamer(tok, skip_prompt=True, skip_special_tokens=True) if stream else None
    saved, model.generation_config = model.generation_config, config  # no model defaults leak into the decoding
    try:
        torch.manual_seed(seed)
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config,
                                 streamer=streamer)
    finally:
        model.generation_config = saved
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def load_for_generation(model: str | None, adapter: str | None = None, export: str | None = None,
                        dtype: torch.dtype = torch.float32, cache=None):
    """(model, tokenizer, what was loaded) from a base + PEFT adapter, or an export of ``fedcollm export``.

    ``export`` is an HF folder or a model GGUF (loaded as the model; no ``model`` then), or a LoRA GGUF
    (applied to ``model``, its base).
    """
    from .models import gguf_io
    from .models.lora import load_adapter_model
    from .models.sources import load_model

    if adapter and export:
        raise ConfigError("give --adapter (a PEFT folder) or --export (an exported model or LoRA GGUF), not both")
    if export:
        path = Path(export)
        if not path.exists():
            raise FileNotFoundError(f"--export {path} does not exist")
        if path.suffix == ".gguf" and gguf_io.file_type(path) == "adapter":
            if not model:
                raise ConfigError(f"--export {path} is a LoRA adapter; give its base with --model")
            base, tok = load_model(model, dtype=dtype, cache=cache)
            return gguf_io.load_lora(base, path), tok, f"{model} + {path}"
        if model:
            raise ConfigError(f"--export {path} is a whole model; drop --model")
        loaded, tok = load_model(str(path), dtype=dtype, cache=cache)
        return loaded, tok, str(path)
    if not model:
        raise ConfigError("give --model (and optionally --adapter), or --export")
    loaded, tok = load_model(model, dtype=dtype, cache=cache)
    if adapter:
        return load_adapter_model(loaded, adapter), tok, f"{model} + {adapter}"
    return loaded, tok, model
