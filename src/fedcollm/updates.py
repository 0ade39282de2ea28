"""The two updates of Algorithm 1 that train something, independent of any transport.

- ``local_update`` (step 2): a client sets θ, runs E epochs of ℓ_TA on D^k, returns θ_k.
- ``mutual_transfer`` (step 4): the server's joint distillation on D^a. Per batch both models run
  forward once; each model's loss is CE + λ·KL(other's detached distribution ‖ its own); the two
  losses touch disjoint adapters, so one backward of their sum and one step of each optimizer is
  exactly two separate updates, without a second forward or stored teacher logits. Both models are
  in train mode, so each teacher distribution carries its LoRA dropout (0.05 on the adapter path
  only): the price of the one forward, as in a teacher that is trained at the same time.

Standalone, FedAvg and Centralized reuse these with the same loop (``train.run_loop``).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .data import Question
from .evaluate import ChoiceBatch, choice_scores, make_choice_batches
from .losses import answer_ce, choice_ce, choice_kl, kd_kl_tokens, proximal_term, sequence_ce
from .models.lora import NamedArrays, get_adapter_arrays, load_adapter, save_adapter, set_adapter_arrays
from .train import Batch, LoopState, answer_logits, make_batches, run_loop, sft_step, trainable


@dataclass(frozen=True)
class TrainSettings:
    """What a loop needs to know besides the model and data (taken from the config)."""

    lr: float
    batch_size: int
    epochs: int = 1
    max_steps: int | None = None
    max_length: int = 256
    grad_clip: float | None = 1.0
    autocast_dtype: torch.dtype | None = None
    seed: int = 0
    progress: bool = True
    packed: bool = False  # each batch's sequences in one row instead of padded rows (``train`` says why)
    objective: str = "tokens"  # tokens: CE on the gold answer's tokens; choices: CE over the answer choices


class DivergedError(RuntimeError):
    """Training left an adapter with NaN/Inf (a learning rate too high, say): it must never be saved or scored."""


def finite_or_raise(arrays: NamedArrays, who: str, lr: float, steps: int) -> NamedArrays:
    """The adapter itself, if every value is finite; else ``DivergedError`` naming who and the learning rate."""
    bad = [k for k, v in arrays if not np.all(np.isfinite(v))]
    if bad:
        raise DivergedError(f"{who}: training made the adapter non-finite (NaN/Inf in {len(bad)} of {len(arrays)} "
                            f"arrays, e.g. {bad[0]}) after {steps} steps at lr {lr:g}; lower the learning rate")
    return arrays


def _seeded(seed: int) -> None:
    """LoRA dropout draws from torch's RNG: seed it per update so a resumed run repeats it exactly."""
    torch.manual_seed(seed)


@dataclass(frozen=True)
class LoopCheckpoint:
    """Every ``every`` steps, a loop's adapter, optimizer and RNG state go to ``folder`` (replaced whole), and
    a loop given the same checkpoint starts after the last one: Centralized's single long loop survives a
    kill that way. The RNG states (CPU, and CUDA's where there is a GPU: LoRA dropout draws there) come
    back with it, so the resumed loop drops out the same units as an uninterrupted one."""

    folder: Path
    every: int

    def resume(self, model, opt: torch.optim.Optimizer) -> LoopState | None:
        old = self.folder.with_name(self.folder.name + ".old")  # killed between the two renames of ``save``
        where = self.folder if (self.folder / "loop.pt").is_file() else old
        if not (where / "loop.pt").is_file():
            return None
        state = torch.load(where / "loop.pt", weights_only=False)
        load_adapter(model, where / "adapter")
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        return LoopState(state["step"], state["tokens"], state["sums"])

    def save(self, model, opt: torch.optim.Optimizer, at: LoopState) -> None:
        if at.step % self.every:
            return
        tmp, old = (self.folder.with_name(self.folder.name + s) for s in (".tmp", ".old"))
        shutil.rmtree(tmp, ignore_errors=True)
        save_adapter(model, tmp / "adapter")
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        torch.save({"optimizer": opt.state_dict(), "rng": torch.get_rng_state(), "cuda_rng": cuda_rng,
                    "step": at.step, "tokens": at.tokens, "sums": at.sums}, tmp / "loop.pt")
        shutil.rmtree(old, ignore_errors=True)
        if self.folder.exists():
            self.folder.rename(old)
        tmp.rename(self.folder)
        shutil.rmtree(old, ignore_errors=True)


def local_update(model, tokenizer, theta: NamedArrays | None, data: Sequence[Question], settings: TrainSettings,
                 desc: str = "client", proximal_mu: float = 0.0,
                 checkpoint: LoopCheckpoint | None = None) -> tuple[NamedArrays, dict[str, float]]:
    """Step 2: θ_k = E epochs of SFT on D^k starting from θ (None: keep the model's current adapter).

    ``proximal_mu`` > 0 adds FedProx's μ/2·‖θ − θ_start‖² to the loss (``losses.proximal_term``);
    ``checkpoint`` makes the loop resumable (``LoopCheckpoint``)."""
    if theta is not None:
        set_adapter_arrays(model, theta)
    _seeded(settings.seed)
    model.train()
    params = trainable(model)
    opt = torch.optim.AdamW(params, lr=settings.lr)
    start = checkpoint.resume(model, opt) if checkpoint is not None else None
    step = sft_step(model) if settings.objective == "tokens" else choice_sft_step(model)
    if proximal_mu > 0:
        anchor = [p.detach().float().clone() for p in params]  # θ^t (or the resumed loop's adapter)
        sft = step

        def step(batch: Batch) -> dict[str, torch.Tensor]:
            out = sft(batch)
            prox = proximal_term(params, anchor, proximal_mu)
            return {"loss": out["loss"] + prox, "task_loss": out["loss"], "proximal": prox}

    metrics = run_loop(
        batches(tokenizer, data, settings, settings.objective, _mask_dtype(model, settings)),
        step,
        [opt], epochs=settings.epochs, max_steps=settings.max_steps, grad_clip=settings.grad_clip,
        autocast_dtype=settings.autocast_dtype, desc=desc, progress=settings.progress, start=start,
        on_step=None if checkpoint is None else lambda at: checkpoint.save(model, opt, at),
    )
    model.eval()
    return finite_or_raise(get_adapter_arrays(model), desc, settings.lr, metrics["steps"]), metrics


def batches(tokenizer, data: Sequence[Question], settings: TrainSettings, kind: str, mask_dtype: torch.dtype):
    """The loop's batches for one epoch: the gold answer's tokens (``tokens``) or each question's choices packed
    as the scorer packs them (``choices``); the same questions in the same seeded order either way."""
    if kind == "tokens":
        return lambda e: make_batches(tokenizer, data, settings.batch_size, settings.max_length, settings.seed, e,
                                      settings.packed)
    if kind == "choices":
        return lambda e: make_choice_batches(tokenizer, data, settings.batch_size, settings.max_length,
                                             settings.seed, e, mask_dtype)
    raise ValueError(f"unknown training target {kind!r} (tokens or choices)")


def _mask_dtype(model, settings: TrainSettings) -> torch.dtype:
    """The additive attention mask's dtype for choice batches: what the model computes in."""
    return settings.autocast_dtype or next(model.parameters()).dtype


def choice_sft_step(model) -> Callable[[ChoiceBatch], dict[str, torch.Tensor]]:
    """Supervised tuning on the choice distribution: CE on the gold choice (``losses.choice_ce``)."""

    def step(cb: ChoiceBatch) -> dict[str, torch.Tensor]:
        scores, _ = choice_scores(model, cb)
        return {"loss": _labeled_mean(choice_ce(scores, cb.gold, cb.valid.to(scores.device)), cb)}

    return step


@dataclass(frozen=True)
class Transfer:
    """How the two models teach each other in step 4; every knob has a source (README, "KD").

    - ``llm_weight`` / ``slm_weight``: the KD weight in the LLM's loss (LLM ← SLM) and in the SLM's
      (SLM ← LLM); the paper has one λ for both. 0 makes that side plain SFT on D^a.
    - ``mix``: ``add`` is the paper's CE + w·KL; ``convex`` is FedMKT's (1 − w)·CE + w·KL.
    - ``select``: ``none`` distils every sequence (the paper); ``greater`` is FedMKT's selective
      distillation: per sequence a model distils toward the other only where the other's CE on the
      gold answer is lower than its own; elsewhere its target is its own distribution, whose KL is 0,
      so that sequence trains on CE alone. The KL is averaged over all answer tokens either way, so w
      keeps its meaning (the fraction distilled is logged as ``*_kd_frac``). ``gated`` (``gate``) filters
      only the LLM ← SLM direction, the one that distils a strong model toward a weaker one: the LLM
      distils a sequence only where the SLM's CE on the gold answer is lower than the LLM's *and* the
      LLM's own gold-answer probability (per token, ``exp(−CE)``) is below ``confidence``, so it keeps
      its own confident predictions (FedMKT's selection, plus the confidence term of weak-to-strong
      generalization, Burns et al. 2023, and selective weak-to-strong's "only where the strong model
      cannot answer"); the SLM ← LLM direction distils every sequence, as in the paper.
    - ``temperature`` τ and ``top_k``: as in ``losses.kd_kl``.
    - ``target``: ``tokens`` (the above: KL of next-token distributions on the gold answer's tokens) or
      ``choices``: each model scores every choice of a D^a question as the evaluator does, q = softmax(s / τ);
      its loss is CE(q, gold) + w·τ²·KL(q_other ‖ q) (``choice_kd_losses``), the KL carrying what the other
      model thinks of every distractor, which the benchmark's ranking of the choices reads; ``token_ce`` adds
      the gold choice's token CE. ``select`` and the weights act per question there.
    """

    llm_weight: float = 1.0
    slm_weight: float = 1.0
    mix: str = "add"
    select: str = "none"
    temperature: float = 1.0
    top_k: int | None = 128
    confidence: float = 0.5
    target: str = "tokens"
    token_ce: bool = False


def _mixed(ce: torch.Tensor, kl: torch.Tensor, weight: float, mix: str) -> torch.Tensor:
    if mix == "add":
        return ce + weight * kl
    if mix == "convex":
        return (1.0 - weight) * ce + weight * kl
    raise ValueError(f"unknown KD mix {mix!r} (add or convex)")


def gate(seq_llm: torch.Tensor, seq_slm: torch.Tensor, confidence: float) -> torch.Tensor:
    """``select="gated"``: per sequence, does the LLM distil toward the SLM? From each model's mean CE on the
    gold answer's tokens (``losses.sequence_ce``): yes where the SLM's CE is lower (the SLM is closer to the
    right answer) and the LLM's per-token gold probability ``exp(−CE)`` is below ``confidence`` (unsure)."""
    return (seq_slm < seq_llm) & (torch.exp(-seq_llm) < confidence)


def _distilled(student: torch.Tensor, teacher: torch.Tensor, batch: Batch, spec: Transfer,
               select: torch.Tensor | None, weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's KL toward the (detached) teacher, averaged over answer tokens; with ``select`` (one bool
    per sequence) only the selected sequences' tokens count, the others add 0. Also the fraction selected.
    A direction of weight 0 is plain SFT: its KL is not computed (0, and nothing distilled)."""
    if weight == 0:
        zero = torch.zeros((), device=student.device)
        return zero, zero
    kl = kd_kl_tokens(student, teacher, spec.temperature, spec.top_k)
    if select is None:
        return kl.mean(), torch.ones((), device=kl.device)
    keep = select[batch.rows.to(kl.device)].float()
    return (kl * keep).mean(), select.float().mean()


def kd_losses(f: torch.Tensor, g: torch.Tensor, batch: Batch, spec: Transfer) -> dict[str, torch.Tensor]:
    """Both models' losses from their answer logits (f: the LLM's, g: the SLM's), each target detached."""
    ce_f, ce_g = answer_ce(f, batch.targets), answer_ce(g, batch.targets)
    seq_f = seq_g = None
    if spec.select != "none":  # per sequence: which model is closer to the gold answer?
        n = batch.n_sequences
        with torch.no_grad():
            seq_f = sequence_ce(f, batch.targets, batch.rows, n)
            seq_g = sequence_ce(g, batch.targets, batch.rows, n)
    llm_distils, slm_distils = _selected(seq_f, seq_g, spec)
    kl_f, frac_f = _distilled(f, g, batch, spec, llm_distils, spec.llm_weight)  # LLM learns from the SLM (g detached)
    kl_g, frac_g = _distilled(g, f, batch, spec, slm_distils, spec.slm_weight)  # SLM learns from the LLM (f detached)
    loss_f = _mixed(ce_f, kl_f, spec.llm_weight, spec.mix)
    loss_g = _mixed(ce_g, kl_g, spec.slm_weight, spec.mix)
    return {"loss": loss_f + loss_g, "llm_loss": loss_f, "llm_ce": ce_f, "llm_kl": kl_f, "llm_kd_frac": frac_f,
            "slm_loss": loss_g, "slm_ce": ce_g, "slm_kl": kl_g, "slm_kd_frac": frac_g}


Selection = torch.Tensor | None  # one bool per sequence or question: where a model distils; None: everywhere


def _selected(ce_f: torch.Tensor | None, ce_g: torch.Tensor | None, spec: Transfer) -> tuple[Selection, Selection]:
    """(where the LLM distils toward the SLM, where the SLM distils toward the LLM), from each model's CE on the
    gold answer per sequence or question (``select``: none, greater or gated)."""
    if spec.select == "none":
        return None, None
    ce_f, ce_g = ce_f.detach(), ce_g.detach()
    if spec.select == "greater":
        return ce_g < ce_f, ce_f < ce_g
    if spec.select == "gated":
        return gate(ce_f, ce_g, spec.confidence), None
    raise ValueError(f"unknown KD selection {spec.select!r} (none, greater or gated)")


def _choice_kl(student: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor, spec: Transfer,
               select: torch.Tensor | None, weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per batch, the mean over questions of the student's choice KL toward the detached teacher (the selected
    questions' only, the others add 0) and the fraction selected; weight 0: not computed."""
    if weight == 0:
        zero = torch.zeros((), device=student.device)
        return zero, zero
    kl = choice_kl(student, teacher, valid, spec.temperature)
    if select is None:
        return kl.mean(), torch.ones((), device=kl.device)
    return (kl * select.float()).mean(), select.float().mean()


def _labeled_mean(per_question: torch.Tensor, cb: ChoiceBatch) -> torch.Tensor:
    """The mean over the batch's labeled questions (0, still in the graph, where none is labeled)."""
    if bool(cb.labeled.all()):
        return per_question.mean()
    labeled = cb.labeled.to(per_question.device)
    return (per_question * labeled).sum() / labeled.sum().clamp(min=1)


def _gold_token_ce(token_logp: torch.Tensor, cb: ChoiceBatch) -> torch.Tensor:
    """Mean −log p over the gold choices' tokens: the tokens target's CE, read off the choice batch (labeled
    questions only)."""
    gold_slot = (torch.arange(len(cb.n_choices)) * cb.n_slots + cb.gold)[cb.labeled]
    on_gold = (cb.owner[:, None] == gold_slot[None, :]).any(1).to(token_logp.device)
    return -token_logp[on_gold].mean() if bool(on_gold.any()) else token_logp.sum() * 0


def choice_kd_losses(f: tuple[torch.Tensor, torch.Tensor], g: tuple[torch.Tensor, torch.Tensor], cb: ChoiceBatch,
                     spec: Transfer) -> dict[str, torch.Tensor]:
    """Both models' choice-level losses from their (scores, token log-probs): f the LLM's, g the SLM's."""
    (s_f, tok_f), (s_g, tok_g) = f, g
    valid, gold = cb.valid.to(s_f.device), cb.gold
    q_ce_f, q_ce_g = choice_ce(s_f, gold, valid), choice_ce(s_g, gold, valid)  # per question (0 if unlabeled)
    llm_distils, slm_distils = _selected(q_ce_f, q_ce_g, spec)
    if not bool(cb.labeled.all()) and spec.select != "none":
        # no gold, no evidence that the SLM is right: the LLM does not distil an unlabeled question toward it,
        # and the SLM distils every unlabeled question toward the LLM (the paper's direction, unselected)
        labeled = cb.labeled.to(s_f.device)
        llm_distils = llm_distils & labeled
        slm_distils = None if slm_distils is None else slm_distils | ~labeled
    kl_f, frac_f = _choice_kl(s_f, s_g, valid, spec, llm_distils, spec.llm_weight)  # LLM toward the SLM
    kl_g, frac_g = _choice_kl(s_g, s_f, valid, spec, slm_distils, spec.slm_weight)  # SLM toward the LLM
    ce_f, ce_g = _labeled_mean(q_ce_f, cb), _labeled_mean(q_ce_g, cb)
    if spec.token_ce:
        ce_f, ce_g = ce_f + _gold_token_ce(tok_f, cb), ce_g + _gold_token_ce(tok_g, cb)
    loss_f = _mixed(ce_f, kl_f, spec.llm_weight, spec.mix)
    loss_g = _mixed(ce_g, kl_g, spec.slm_weight, spec.mix)
    return {"loss": loss_f + loss_g, "llm_loss": loss_f, "llm_ce": ce_f, "llm_kl": kl_f, "llm_kd_frac": frac_f,
            "slm_loss": loss_g, "slm_ce": ce_g, "slm_kl": kl_g, "slm_kd_frac": frac_g}


def mutual_choice_step(llm, slm, spec: Transfer):
    """The joint step of ``mutual_kd_step`` on choice batches (``Transfer.target == "choices"``)."""

    def step(cb: ChoiceBatch) -> dict[str, torch.Tensor]:
        return choice_kd_losses(choice_scores(llm, cb), choice_scores(slm, cb), cb, spec)

    return step


def mutual_kd_step(llm, slm, spec: Transfer):
    """One joint step of Eq. 3-6: L^f(ω) = CE_f + λ_f·KL(g‖f) and L^g(θ) = CE_g + λ_g·KL(f‖g) (see ``Transfer``)."""

    def step(batch: Batch) -> dict[str, torch.Tensor]:
        return kd_losses(answer_logits(llm, batch), answer_logits(slm, batch), batch, spec)  # f_{ψ+ω}, g_{φ+θ}

    return step


def mutual_transfer(llm, slm, tokenizer, theta: NamedArrays, aux: Sequence[Question], llm_lr: float,
                    settings: TrainSettings, spec: Transfer) -> tuple[NamedArrays, dict[str, float]]:
    """Step 4: R joint KD steps on D^a from θ^{t,0}; returns θ^{t,R} (ω is updated in place on ``llm``)."""
    set_adapter_arrays(slm, theta)
    _seeded(settings.seed)
    llm.train()
    slm.train()
    opts = [torch.optim.AdamW(trainable(llm), lr=llm_lr), torch.optim.AdamW(trainable(slm), lr=settings.lr)]
    metrics = run_loop(
        batches(tokenizer, aux, settings, spec.target, _mask_dtype(slm, settings)),
        mutual_kd_step(llm, slm, spec) if spec.target == "tokens" else mutual_choice_step(llm, slm, spec),
        opts, epochs=settings.epochs, max_steps=settings.max_steps, grad_clip=settings.grad_clip,
        autocast_dtype=settings.autocast_dtype, desc="server KD", progress=settings.progress,
    )
    llm.eval()
    slm.eval()
    finite_or_raise(get_adapter_arrays(llm), "server KD, the LLM's ω", llm_lr, metrics["steps"])
    return finite_or_raise(get_adapter_arrays(slm), "server KD, the SLM's θ", settings.lr, metrics["steps"]), metrics
