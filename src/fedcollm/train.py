"""The one training loop, and the batches it runs on.

Every recipe (client SFT, server mutual KD, Standalone, Centralized) is ``run_loop`` with a different
``step`` function. Batches are tokenized the way the scorer tokenizes (prompt, then answer), and the
LM head is applied only at positions that predict answer tokens: with a 150k vocabulary that saves
most of the head's compute and nearly all of the logits' memory.

A batch is either right-padded rows, or ``packed``: its sequences laid end to end in one row, each with
positions counting from 0, and no attention mask, which transformers reads as packed sequences (each
token attends only within its own sequence). The same examples in the same batches, so the same loss and
gradient up to rounding, without the padding: on cpu-paper's mixed-task batches a third of a padded
batch's tokens are padding (CommonsenseQA's prompts list five choices, OpenBookQA's are a line).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .data import Question, training_pair
from .losses import answer_ce
from .memory import release
from .models.anatomy import backbone_and_head, pad_id
from .precision import autocast

IGNORE = -100


@dataclass
class Batch:
    """Token ids plus, for each answer token, its sequence (``rows``), the position that predicts it and its id.

    Padded: ``input_ids`` is ``[n_sequences, width]`` and row b is sequence b. Packed: ``input_ids`` is
    ``[1, total]``, ``position_ids`` restarts at 0 at each sequence, and ``positions`` index that one row.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    rows: torch.Tensor
    positions: torch.Tensor
    targets: torch.Tensor
    position_ids: torch.Tensor | None = None
    n_sequences: int = 0

    def __post_init__(self) -> None:
        if not self.n_sequences:
            self.n_sequences = int(self.input_ids.shape[0])

    @property
    def packed(self) -> bool:
        return self.position_ids is not None

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())


def encode_example(tokenizer, q: Question, max_length: int) -> tuple[list[int], int]:
    """Token ids of prompt+answer and the number of answer tokens (lm-eval's split of the two)."""
    prompt, answer = training_pair(q)
    ctx = tokenizer(prompt)["input_ids"]
    whole = tokenizer(prompt + answer)["input_ids"]
    n_answer = len(whole) - len(ctx)  # no EOS: ℓ_TA is the answer's tokens, exactly what the scorer reads
    if len(whole) > max_length:
        whole = whole[-max_length:]
        n_answer = min(n_answer, max_length - 1)
    return whole, n_answer


def collate(encoded: Sequence[tuple[list[int], int]], pad_id: int, packed: bool = False) -> Batch:
    if packed:
        return _pack(encoded)
    width = max(len(ids) for ids, _ in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    rows, pos, tgt = [], [], []
    for b, (seq, n_answer) in enumerate(encoded):
        ids[b, : len(seq)] = torch.tensor(seq)
        mask[b, : len(seq)] = 1
        for p in range(len(seq) - n_answer, len(seq)):
            rows.append(b)
            pos.append(p - 1)
            tgt.append(seq[p])
    return Batch(ids, mask, torch.tensor(rows), torch.tensor(pos), torch.tensor(tgt))


def _pack(encoded: Sequence[tuple[list[int], int]]) -> Batch:
    """The sequences end to end in one row, positions restarting at 0 for each (see the module docstring)."""
    ids, pos_ids, rows, pos, tgt = [], [], [], [], []
    for b, (seq, n_answer) in enumerate(encoded):
        start = len(ids)
        ids += seq
        pos_ids += range(len(seq))
        for p in range(len(seq) - n_answer, len(seq)):
            rows.append(b)
            pos.append(start + p - 1)
            tgt.append(seq[p])
    row = torch.tensor([ids])
    return Batch(row, torch.ones_like(row), torch.tensor(rows), torch.tensor(pos), torch.tensor(tgt),
                 position_ids=torch.tensor([pos_ids]), n_sequences=len(encoded))


def make_batches(tokenizer, questions: Sequence[Question], batch_size: int, max_length: int, seed: int,
                 epoch: int = 0, packed: bool = False) -> list[Batch]:
    """One epoch of batches in a seeded shuffle order (same seed and epoch, same batches: resumable).
    ``packed`` lays each batch's sequences in one row instead of padding them (the same examples)."""
    order = np.random.default_rng([seed, epoch]).permutation(len(questions))
    encoded = [encode_example(tokenizer, questions[i], max_length) for i in order]
    return [collate(encoded[i : i + batch_size], pad_id(tokenizer), packed)
            for i in range(0, len(encoded), batch_size)]


def answer_logits(model, batch: Batch) -> torch.Tensor:
    """Logits ``[n_answer_tokens, vocab]`` at the positions predicting answer tokens."""
    backbone, head = backbone_and_head(model)
    dev = head.weight.device  # batches are built on the CPU; the model may be on a GPU
    if batch.packed:  # no mask: transformers builds each sequence's own causal mask from the positions
        hidden = backbone(input_ids=batch.input_ids.to(dev), position_ids=batch.position_ids.to(dev),
                          use_cache=False).last_hidden_state
        return head(hidden[0, batch.positions.to(dev)])
    hidden = backbone(input_ids=batch.input_ids.to(dev), attention_mask=batch.attention_mask.to(dev),
                      use_cache=False).last_hidden_state
    return head(hidden[batch.rows.to(dev), batch.positions.to(dev)])


def sft_step(model) -> Callable[[Batch], dict[str, torch.Tensor]]:
    """Plain supervised fine-tuning on the answer tokens (client update, Standalone, Centralized)."""

    def step(batch: Batch) -> dict[str, torch.Tensor]:
        return {"loss": answer_ce(answer_logits(model, batch), batch.targets)}

    return step


def trainable(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


@dataclass
class LoopState:
    """Where a loop is after ``step`` optimizer steps: what a resumed loop needs besides the weights."""

    step: int
    tokens: int
    sums: dict[str, float]


def run_loop(
    batches_for_epoch: Callable[[int], Sequence[Batch]],
    step: Callable[[Batch], dict[str, torch.Tensor]],
    optimizers: Sequence[torch.optim.Optimizer],
    epochs: int = 1,
    max_steps: int | None = None,
    grad_clip: float | None = 1.0,
    autocast_dtype: torch.dtype | None = None,
    desc: str = "train",
    progress: bool = True,
    start: LoopState | None = None,
    on_step: Callable[[LoopState], None] | None = None,
) -> dict[str, float]:
    """Run ``step`` over the batches, backprop its ``loss``, step every optimizer; mean metrics back.

    ``step`` returns ``loss`` (what is differentiated) plus any metrics; several models train jointly by
    returning the sum of losses over disjoint parameters, each with its own optimizer.

    Resuming: ``start`` (a state ``on_step`` was given after some step) skips the steps already taken
    (the batches of an epoch are a function of its seed, so the same ones) and carries their metric sums
    on; the caller has put back the adapter, optimizer and RNG state saved with it.
    """
    groups = [[p for g in opt.param_groups for p in g["params"]] for opt in optimizers]
    params = [p for group in groups for p in group]
    sums: dict[str, float] = dict(start.sums) if start else {}
    n_steps, n_tokens = (start.step, start.tokens) if start else (0, 0)
    skip = n_steps
    first = batches_for_epoch(0)
    total = len(first) * epochs if max_steps is None else max_steps
    bar = tqdm(total=total, desc=desc, disable=not progress, leave=False)
    device = params[0].device.type if params else "cpu"
    bar.update(skip)
    seen = 0
    for epoch in range(epochs):
        if seen + len(first) <= skip:  # a whole epoch taken before the resume: not even built again
            seen += len(first)
            continue
        for batch in first if epoch == 0 else batches_for_epoch(epoch):
            if seen < skip:
                seen += 1
                continue
            if max_steps is not None and n_steps >= max_steps:
                break
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            with autocast(device, autocast_dtype):
                out = step(batch)
            out["loss"].backward()
            if grad_clip:  # per optimizer: jointly trained models are clipped independently
                for group in groups:
                    torch.nn.utils.clip_grad_norm_(group, grad_clip)
            for opt in optimizers:
                opt.step()
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            n_steps += 1
            n_tokens += batch.n_tokens
            bar.update(1)
            bar.set_postfix(loss=f"{float(out['loss'].detach()):.3f}")
            if on_step is not None:
                on_step(LoopState(n_steps, n_tokens, dict(sums)))
    bar.close()
    release()  # the activations of the last step are garbage now
    return {**{k: v / max(n_steps, 1) for k, v in sums.items()}, "steps": n_steps, "tokens": n_tokens}
