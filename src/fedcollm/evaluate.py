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
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .data import DataError, MCRequest, Question, load_eval, mc_request
from .data.prompts import reported_metric
from .data.schema import is_instructions
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
    gold: int | None  # None: unlabeled


def encode_request(tokenizer, req: MCRequest, max_length: int) -> Encoded:
    """lm-eval's ``_encode_pair`` for every choice (trailing context spaces move to the continuation)."""
    context = req.context
    n_spaces = len(context) - len(context.rstrip())
    prefix = context[len(context) - n_spaces :] if n_spaces else ""
    context = context[: len(context) - n_spaces] if n_spaces else context
    ctx = tokenizer(context)["input_ids"]
    conts = []
    for choice in req.choices:
        whole = tokenizer(context + prefix + req.delimiter + choice)["input_ids"]
        conts.append(whole[len(ctx) :])
    longest = max(len(c) for c in conts)
    if len(ctx) + longest > max_length + 1:  # lm-eval keeps the last max_length+1 tokens of each pair
        ctx = ctx[-(max_length + 1 - longest) :]
    return Encoded(ctx, conts, req.choices, req.gold)


@dataclass
class ChoiceBatch:
    """Questions packed for scoring (see the module docstring): one row per question, a tree mask, and for each
    choice token the row, the position that predicts it, its id and its (question, choice)."""

    input_ids: torch.Tensor  # [questions, width]
    position_ids: torch.Tensor  # [questions, width]
    mask: torch.Tensor  # [questions, 1, width, width], additive: 0 where a token may attend, the dtype's min elsewhere
    rows: torch.Tensor  # [choice tokens]
    positions: torch.Tensor  # [choice tokens]
    targets: torch.Tensor  # [choice tokens]
    owner: torch.Tensor  # [choice tokens]: question * n_slots + choice (a flat index into ``[questions, n_slots]``)
    n_choices: list[int]  # per question
    gold: torch.Tensor  # [questions]; -1 where a question is unlabeled (``labeled``)
    lengths: list[int]  # real (unpadded) tokens per row
    divisors: torch.Tensor | None = None  # [questions, n_slots]: what a choice's sum is divided by (acc_norm's chars)

    @property
    def n_slots(self) -> int:
        return max(self.n_choices)

    @property
    def n_tokens(self) -> int:
        return sum(self.lengths)

    @property
    def labeled(self) -> torch.Tensor:
        """``[questions]``: which questions have a gold choice (the others get KD terms only)."""
        return self.gold >= 0

    @property
    def valid(self) -> torch.Tensor:
        """``[questions, n_slots]``: which (question, choice) slots hold a choice."""
        return torch.arange(self.n_slots)[None, :] < torch.tensor(self.n_choices)[:, None]


def pack_choices(batch: Sequence[Encoded], pad_id: int, dtype: torch.dtype) -> ChoiceBatch:
    """Input ids, position ids, additive tree mask and the gather plan of ``batch``'s questions."""
    lengths = [len(e.context) + sum(len(c) - 1 for c in e.choices) for e in batch]
    width = max(lengths)
    slots = max(len(e.choices) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(batch), width), dtype=torch.long)
    allowed = torch.zeros((len(batch), width, width), dtype=torch.bool)
    rows, src, tgt, owner = [], [], [], []
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
            owner += [b * slots + j] * len(cont)
            start = end
        for p in range(start, width):  # padding attends to itself only (keeps softmax finite)
            allowed[b, p, p] = True
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    gold = torch.tensor([-1 if e.gold is None else e.gold for e in batch])  # -1: unlabeled
    return ChoiceBatch(ids, pos, mask[:, None], torch.tensor(rows), torch.tensor(src), torch.tensor(tgt),
                       torch.tensor(owner), [len(e.choices) for e in batch], gold,
                       lengths)


def choice_logits(model, cb: ChoiceBatch) -> torch.Tensor:
    """The LM head's logits at every position that predicts a choice token, ``[choice tokens, vocab]``."""
    if isinstance(model, ProxyTuned):
        return model.choice_logits(cb)
    backbone, head = backbone_and_head(model)
    device = head.weight.device  # batches are built on the CPU; the model may be on a GPU
    hidden = backbone(input_ids=cb.input_ids.to(device), position_ids=cb.position_ids.to(device),
                      attention_mask=cb.mask.to(device), use_cache=False).last_hidden_state
    return head(hidden[cb.rows.to(device), cb.positions.to(device)])


def choice_token_logprobs(model, cb: ChoiceBatch) -> torch.Tensor:
    """log p of every choice token given its context and earlier tokens, ``[choice tokens]`` (float32), with
    autograd when the caller allows it: the scorer and choice-level KD read the same numbers."""
    logits = choice_logits(model, cb)
    return torch.log_softmax(logits.float(), dim=-1).gather(1, cb.targets.to(logits.device)[:, None])[:, 0]


class ProxyTuned(torch.nn.Module):
    """The LLM steered by the clients' SLM: logits LLM(x) + α·(SLM_θ(x) − SLM_base(x)) (proxy-tuning, Liu et al.
    2024, arXiv 2401.08565). What the federation changed in the SLM (θ against its base) is added to the LLM's
    next-token logits, without training the LLM on the SLM's distribution (whose mistakes it would copy).

    ``slm`` is a PEFT model: its base is the same model with the adapter switched off. The two models must share
    a tokenizer and an output vocabulary (``models.sources.check_same_tokenizer``); the scorer sees this as one
    causal LM (``choice_logits``)."""

    def __init__(self, llm, slm, alpha: float) -> None:
        super().__init__()
        self.llm, self.slm, self.alpha = llm, slm, float(alpha)

    def choice_logits(self, cb: ChoiceBatch) -> torch.Tensor:
        f = choice_logits(self.llm, cb).float()
        tuned = choice_logits(self.slm, cb).float()
        with self.slm.disable_adapter():
            base = choice_logits(self.slm, cb).float()
        if tuned.shape[-1] != f.shape[-1]:
            raise ValueError(f"proxy-tuning needs one output vocabulary: the LLM has {f.shape[-1]}, "
                             f"the SLM {tuned.shape[-1]}")
        return f + self.alpha * (tuned.to(f.device) - base.to(f.device))


def encode_for_choices(tokenizer, q: Question, max_length: int) -> Encoded:
    """``q`` encoded for choice-level training: a DataError names it when it has no choice distribution to learn
    (fewer than two choices, or a choice longer than ``max_length`` tokens)."""
    if len(q.choices) < 2:
        raise DataError(f"{q.task} question {q.id!r}: {len(q.choices)} choice(s); choice-level training needs >= 2")
    e = encode_request(tokenizer, mc_request(q), max_length)
    longest = max(len(c) for c in e.choices)
    if longest > max_length:
        raise DataError(f"{q.task} question {q.id!r}: a choice of {longest} tokens is longer than max_length "
                        f"{max_length}; raise max_length or drop the question")
    return e


def make_choice_batches(tokenizer, questions: Sequence[Question], batch_size: int, max_length: int, seed: int,
                        epoch: int = 0, mask_dtype: torch.dtype = torch.float32) -> list[ChoiceBatch]:
    """One epoch of questions packed for choice-level training, in ``train.make_batches``' seeded order (the same
    questions in the same batches as the tokens objective's). Each choice is scored as the evaluator scores it:
    lm-eval's context and continuation, the sum of its tokens' log-probs, divided by its length in characters
    for a task reported by acc_norm (``prompts.reported_metric``). A question with fewer than two choices, or a
    choice longer than ``max_length`` tokens, has no choice distribution to learn: a DataError names it."""
    order = np.random.default_rng([seed, epoch]).permutation(len(questions))
    encoded = [encode_for_choices(tokenizer, questions[i], max_length) for i in order]
    norms = [reported_metric(questions[i].task) == "acc_norm" for i in order]
    batches = []
    for start in range(0, len(encoded), batch_size):
        part = encoded[start : start + batch_size]
        cb = pack_choices(part, pad_id(tokenizer), mask_dtype)
        div = torch.ones((len(part), cb.n_slots))
        for b, (e, norm) in enumerate(zip(part, norms[start : start + batch_size])):
            if norm:
                div[b, : len(e.choice_texts)] = torch.tensor([float(len(c)) for c in e.choice_texts])
        cb.divisors = div
        batches.append(cb)
    return batches


def choice_scores(model, cb: ChoiceBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(each choice's score ``[questions, n_slots]``, each choice token's log-prob): the evaluator's numbers,
    with autograd (``choice_token_logprobs``), for choice-level training."""
    token_logp = choice_token_logprobs(model, cb)
    sums = choice_sums(token_logp, cb)
    return (sums if cb.divisors is None else sums / cb.divisors.to(sums.device)), token_logp


def choice_sums(token_logp: torch.Tensor, cb: ChoiceBatch) -> torch.Tensor:
    """Each choice's log-likelihood (the sum over its tokens), ``[questions, n_slots]``, in the dtype of
    ``token_logp``; slots without a choice hold 0 (``cb.valid`` says which)."""
    flat = torch.zeros(len(cb.n_choices) * cb.n_slots, dtype=token_logp.dtype, device=token_logp.device)
    return flat.index_add(0, cb.owner.to(token_logp.device), token_logp).view(len(cb.n_choices), cb.n_slots)


@torch.inference_mode()
def loglikelihoods(
    model, encoded: Sequence[Encoded], pad_id: int, batch_size: int = 8, autocast_dtype: torch.dtype | None = None,
    progress: bool = False, desc: str = "scoring",
) -> list[list[float]]:
    """Sum of log-probabilities of each choice's tokens given the context, per question."""
    device = next(model.parameters()).device
    mask_dtype = autocast_dtype or next(model.parameters()).dtype
    order = sorted(range(len(encoded)), key=lambda i: -(len(encoded[i].context) + sum(map(len, encoded[i].choices))))
    out: list[list[float]] = [[] for _ in encoded]
    bar = tqdm(total=len(encoded), desc=desc, disable=not progress, leave=False)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        cb = pack_choices([encoded[i] for i in idx], pad_id, mask_dtype)
        with autocast(device.type, autocast_dtype):
            token_logp = choice_token_logprobs(model, cb)
        sums = choice_sums(token_logp.double(), cb).cpu().numpy()  # summed in float64, as lm-eval's Python floats
        for b, i in enumerate(idx):
            out[i] = [float(x) for x in sums[b, : cb.n_choices[b]]]
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


def predictions_name(task: str) -> str:
    """A file name for a task's per-question predictions: a plain name as it is; a path (a folder or a YAML of the
    user's) by its last part and a digest of the whole path, so that ``a/med`` and ``b/med`` stay apart."""
    if "/" not in task and not task.endswith((".yaml", ".yml")):
        return task
    digest = hashlib.sha1(str(Path(task).expanduser().resolve()).encode()).hexdigest()[:8]
    return f"{Path(task).stem or 'task'}-{digest}"


def response_nlls(
    model, tokenizer, questions: Sequence[Question], batch_size: int = 8, max_length: int = 2048,
    autocast_dtype: torch.dtype | None = None, progress: bool = False, desc: str = "scoring",
) -> list[dict]:
    """Instruction data: each held-out response's negative log-likelihood given its prompt, summed over its tokens,
    and its token count (the scorer's numbers: lm-eval's split of prompt and continuation, one continuation)."""
    encoded = [encode_request(tokenizer, mc_request(q), max_length) for q in questions]
    lls = loglikelihoods(model, encoded, pad_id(tokenizer), batch_size, autocast_dtype, progress, desc)
    return [{"id": q.id, "nll": -ll[0], "tokens": len(e.choices[0])} for q, e, ll in zip(questions, encoded, lls)]


def nll_metrics(rows: Sequence[dict]) -> dict[str, float | int | str]:
    """The NLL per response token over all held-out responses (each token weighs the same), its perplexity, and
    the responses' count and their ids' digest (as ``accuracy`` gives)."""
    tokens = sum(r["tokens"] for r in rows)
    nll = sum(r["nll"] for r in rows) / tokens if tokens else float("nan")
    return {"nll": nll, "ppl": math.exp(nll) if tokens else float("nan"), "n": len(rows), "tokens": tokens,
            "ids_sha1": hashlib.sha1("\n".join(r["id"] for r in rows).encode()).hexdigest()[:12]}


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
                desc = Path(task).name if "/" in task else task  # a path's last part on the progress bar
                if is_instructions(task):
                    rows = response_nlls(model, tokenizer, qs, batch_size, max_length, autocast_dtype, progress, desc)
                    metrics[task] = nll_metrics(rows)
                else:
                    res = score_questions(model, tokenizer, qs, batch_size, max_length, autocast_dtype, progress,
                                          desc)
                    metrics[task], rows = accuracy(res), [asdict(r) for r in res]
                metrics[task]["seconds"] = round(time.perf_counter() - t0, 3)
                if out_dir is not None:
                    path = Path(out_dir) / f"predictions_{predictions_name(task)}.jsonl"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    finally:
        model.train(was_training)
        release()
    return metrics
