"""The parts of a causal LM that the training loop and the scorer both reach into, PEFT wrapper or not.

Both apply the LM head only where a logit is needed (answer tokens), so both need the decoder stack
and the head separately; both pad with the tokenizer's pad id. One place for each, so the loop and
the scorer cannot drift apart.
"""

from __future__ import annotations

import torch


def base_of(model) -> torch.nn.Module:
    """The transformers model inside a PEFT wrapper (LoRA layers stay in place), or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def backbone_and_head(model) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The decoder stack (hidden states) and the LM head (hidden -> vocabulary logits)."""
    inner = base_of(model)
    return inner.get_decoder(), inner.get_output_embeddings()


def pad_id(tokenizer) -> int:
    """The id that pads a batch (masked out either way; 0 when the tokenizer names none)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
