"""The multiple-choice scorer: lm-eval's log-likelihoods, one forward pass per question.

lm-evaluation-harness scores a question with one sequence per choice, ``context + choice``, so the
shared context is recomputed once per choice and the LM head runs over every position. We pack a
question into ONE row, ``context | choice_1 | choice_2 | ...`` (each choice without its last token,
which predicts nothing), with a tree-shaped attention mask
(each choice sees the context and its own earlier tokens, never another choice) and position ids that
restart after the context for every choice. Each choice token then sees exactly what it sees in
lm-eval's sequence, so the log-likelihoods are the same up to float rounding. The LM head is applied
only at the positions that predict a choice token (with a 150k vocabulary it is a large share of the
compute). Tokenization is lm-eval's: ``context_enc = encode(context)``, ``choice_enc =
encode(context + delimiter + choice)[len(context_enc):]``.

Works on any causal LM, including a PEFT model (score with the adapter off via ``adapter=False``
without reloading the base).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .data import MCRequest, Question, load_eval, mc_request
from .data.prompts import TARGET_DELIMITER
from .memory import release
from .models.anatomy import backbone_and_head, pad_id
from .precision import autocast

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Encoded:
    """A question tokenized the lm-eval way."""

    context: list[int]
    choices: list[list[int]]
    choice_texts: tuple[str, ...]
    gold: int


def encode_request(tokenizer, req: MCRequest, max_length: int) -> Encoded:
    """lm-eval's ``_encode_pair`` for every choice (trailing context spaces move to the continuation)."""
    context = req.context
    n_spaces = len(context) - len(context.rstrip())
    prefix = context[len(context) - n_spaces :] if n_spaces else ""
    context = context[: len(context) - n_spaces] if n_spaces else context
    ctx = tokenizer(context)["input_ids"]
    conts = []
    for choice in req.choices:
        whole = tokenizer(context + prefix + TARGET_DELIMITER + choice)["input_ids"]
        conts.append(whole[len(ctx) :])
    longest = max(len(c) for c in conts)
    if len(ctx) + longest > max_length + 1:  # lm-eval keeps the last max_length+1 tokens of each pair
        ctx = ctx[-(max_length + 1 - longest) :]
    return Encoded(ctx, conts, req.choices, req.gold)


def _pack(batch: Sequence[Encoded], pad_id: int, dtype: torch.dtype):
    """Input ids, position ids, additive tree mask and the (row, position, token, choice) gather plan."""
    lengths = [len(e.context) + sum(len(c) - 1 for c in e.choices) for e in batch]
    width = max(lengths)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(batch), width), dtype=torch.long)
    allowed = torch.zeros((len(batch), width, width), dtype=torch.bool)
    rows, src, tgt, owner = [], [], [], []  # owner indexes (question-in-batch, choice)
    for b, e in enumerate(batch):
        n_ctx = len(e.context)
        ids[b, :n_ctx] = torch.tensor(e.context)
        pos[b, :n_ctx] = torch.arange(n_ctx)
        allowed[b, :n_ctx, :n_ctx] = torch.ones(n_ctx, n_ctx, dtype=torch.bool).tril()
        start = n_ctx
        for j, cont in enumerate(e.choices):
            # A choice's last token predicts nothing and no other token attends to it: leave it out.
            n = len(cont) - 1
            end = start + n
            ids[b, start:end] = torch.tensor(cont[:-1], dtype=torch.long)
            pos[b, start:end] = torch.arange(n_ctx, n_ctx + n)
            allowed[b, start:end, :n_ctx] = True
            allowed[b, start:end, start:end] = torch.ones(n, n, dtype=torch.bool).tril()
            # token k of the choice is predicted by the previous token: the context's last, then the choice's
            preds = [n_ctx - 1] + list(range(start, end))
            rows += [b] * len(cont)
            src += preds
            tgt += cont
            owner += [(b, j)] * len(cont)
            start = end
        for p in range(start, width):  # padding attends to itself only (keeps softmax finite)
            allowed[b, p, p] = True
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    return ids, pos, mask[:, None], (torch.tensor(rows), torch.tensor(src), torch.tensor(tgt)), owner


@torch.inference_mode()
def loglikelihoods(
    model, encoded: Sequence[Encoded], pad_id: int, batch_size: int = 8, autocast_dtype: torch.dtype | None = None,
    progress: bool = False, desc: str = "scoring",
) -> list[list[float]]:
    """Sum of log-probabilities of each choice's tokens given the context, per question."""
    backbone, head = backbone_and_head(model)
    device = next(model.parameters()).device
    mask_dtype = autocast_dtype or next(model.parameters()).dtype
    order = sorted(range(len(encoded)), key=lambda i: -(len(encoded[i].context) + sum(map(len, encoded[i].choices))))
    out: list[list[float]] = [[] for _ in encoded]
    bar = tqdm(total=len(encoded), desc=desc, disable=not progress, leave=False)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = [encoded[i] for i in idx]
        ids, pos, mask, (rows, src, tgt), owner = _pack(batch, pad_id, mask_dtype)
        with autocast(device.type, autocast_dtype):
            hidden = backbone(input_ids=ids.to(device), position_ids=pos.to(device),
                              attention_mask=mask.to(device), use_cache=False).last_hidden_state
            logits = head(hidden[rows.to(device), src.to(device)])
        logp = torch.log_softmax(logits.float(), dim=-1).gather(1, tgt.to(device)[:, None])[:, 0].cpu().numpy()
        sums: dict[tuple[int, int], float] = {}
        for (b, j), lp in zip(owner, logp):
            sums[(b, j)] = sums.get((b, j), 0.0) + float(lp)
        for b, i in enumerate(idx):
            out[i] = [sums[(b, j)] for j in range(len(encoded[i].choices))]
        bar.update(len(idx))
    bar.close()
    return out


@dataclass(frozen=True)
class QuestionResult:
    id: str
    gold: int
    pred: int
    pred_norm: int
    lls: list[float]


def predictions(encoded: Sequence[Encoded], lls: Sequence[Sequence[float]]) -> tuple[list[int], list[int]]:
    """lm-eval's argmax (first index on ties) of the raw and the length-normalised log-likelihoods.

    acc_norm divides by ``len(choice)`` in characters, as lm-eval 0.4.x's ``process_results`` does.
    """
    pred = [int(np.argmax(ll)) for ll in lls]
    pred_norm = [int(np.argmax(np.array(ll) / np.array([float(len(c)) for c in e.choice_texts])))
                 for e, ll in zip(encoded, lls)]
    return pred, pred_norm


def score_questions(
    model, tokenizer, questions: Sequence[Question], batch_size: int = 8, max_length: int = 2048,
    autocast_dtype: torch.dtype | None = None, progress: bool = False, desc: str = "scoring",
) -> list[QuestionResult]:
    encoded = [encode_request(tokenizer, mc_request(q), max_length) for q in questions]
    lls = loglikelihoods(model, encoded, pad_id(tokenizer), batch_size, autocast_dtype, progress, desc)
    pred, pred_norm = predictions(encoded, lls)
    return [QuestionResult(q.id, q.answer, p, pn, ll) for q, p, pn, ll in zip(questions, pred, pred_norm, lls)]


def accuracy(results: Sequence[QuestionResult]) -> dict[str, float | int | str]:
    """acc / acc_norm, plus each question's outcome as a 0/1 string and a digest of the question ids.

    The per-question outcomes let a report test whether two methods differ (paired bootstrap, McNemar)
    on the same questions; the digest proves they were the same questions, in the same order.
    """
    n = len(results)
    return {
        "acc": sum(r.pred == r.gold for r in results) / n if n else float("nan"),
        "acc_norm": sum(r.pred_norm == r.gold for r in results) / n if n else float("nan"),
        "n": n,
        "correct": "".join("1" if r.pred == r.gold else "0" for r in results),
        "correct_norm": "".join("1" if r.pred_norm == r.gold else "0" for r in results),
        "ids_sha1": hashlib.sha1("\n".join(r.id for r in results).encode()).hexdigest()[:12],
    }


@contextlib.contextmanager
def adapter_enabled(model, enabled: bool) -> Iterator[None]:
    """Score a PEFT model with its adapter switched off, without reloading the base."""
    if enabled or not hasattr(model, "disable_adapter"):
        yield
    else:
        with model.disable_adapter():
            yield


def evaluate_tasks(
    model, tokenizer, tasks: Sequence[str], data_dir=None, limit: int | None = None, batch_size: int = 8,
    max_length: int = 2048, autocast_dtype: torch.dtype | None = None, adapter: bool = True,
    progress: bool = True, out_dir: str | Path | None = None, questions: dict[str, list[Question]] | None = None,
) -> dict[str, dict[str, float]]:
    """acc / acc_norm per task (and per-question results as JSONL under ``out_dir`` when given)."""
    was_training = model.training
    model.eval()
    metrics: dict[str, dict[str, float]] = {}
    try:
        with adapter_enabled(model, adapter):
            for task in tasks:
                qs = questions[task] if questions is not None else load_eval(task, data_dir, limit)
                t0 = time.perf_counter()
                res = score_questions(model, tokenizer, qs, batch_size, max_length, autocast_dtype, progress, task)
                metrics[task] = {**accuracy(res), "seconds": round(time.perf_counter() - t0, 3)}
                if out_dir is not None:
                    path = Path(out_dir) / f"predictions_{task}.jsonl"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text("".join(json.dumps(asdict(r)) + "\n" for r in res))
    finally:
        model.train(was_training)
        release()
    return metrics
