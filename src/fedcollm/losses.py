"""Losses on the answer tokens: task cross-entropy and the knowledge-distillation KL of FedCoLLM.

Both take logits already restricted to the positions that predict answer tokens (see
``train.answer_logits``), shape ``[n_answer_tokens, vocab]``, so prompt positions cost nothing here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def answer_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """ℓ_TA: mean causal-LM cross-entropy over answer tokens."""
    return F.cross_entropy(logits.float(), targets.to(logits.device))


def proximal_term(params: list[torch.Tensor], reference: list[torch.Tensor], mu: float) -> torch.Tensor:
    """FedProx's μ/2·‖θ − θ^t‖² over the trainable adapter (Li et al. 2020, "Federated Optimization in
    Heterogeneous Networks", eq. 2): it keeps a client's θ_k near the broadcast θ^t on skewed data."""
    return 0.5 * mu * sum(((p.float() - r) ** 2).sum() for p, r in zip(params, reference))


def sequence_ce(logits: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Mean cross-entropy of each sequence's answer tokens, ``[n_rows]`` (``rows[i]``: token i's sequence).

    What selective distillation compares: which model puts more probability on this gold answer.
    """
    dev = logits.device
    tok = F.cross_entropy(logits.float(), targets.to(dev), reduction="none")
    rows = rows.to(dev)
    total = torch.zeros(n_rows, device=dev).index_add_(0, rows, tok)
    count = torch.zeros(n_rows, device=dev).index_add_(0, rows, torch.ones_like(tok))
    return total / count.clamp(min=1)


def kd_kl_tokens(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0, top_k: int | None = None
) -> torch.Tensor:
    """KL(p_teacher || p_student) of each answer token, ``[n_answer_tokens]``, times τ² (see ``kd_kl``)."""
    t = teacher.detach().float() / temperature
    s = student.float() / temperature
    if top_k is not None and top_k < t.shape[-1]:
        t, idx = t.topk(top_k, dim=-1)
        s = s.gather(-1, idx)
    t_logp, s_logp = F.log_softmax(t, dim=-1), F.log_softmax(s, dim=-1)
    return (t_logp.exp() * (t_logp - s_logp)).sum(-1) * temperature**2


def kd_kl(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0, top_k: int | None = None
) -> torch.Tensor:
    """KL(p_teacher || p_student) per answer token, averaged, times τ² (Hinton et al.'s gradient scale).

    The teacher is detached here, so each model's KL only moves that model: in FedCoLLM's joint step the
    LLM's target is the SLM's distribution and vice versa. With ``top_k`` both distributions are taken
    over the teacher's k most likely tokens (each renormalised there), as FATE-LLM keeps the top-k
    logits to cut the cost of a 150k vocabulary: a true KL on that support, >= 0 and 0 iff they agree.
    """
    return kd_kl_tokens(student, teacher, temperature, top_k).mean()


def choice_log_probs(scores: torch.Tensor, valid: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log q, q = softmax(s / τ) over each question's own choices, ``[questions, slots]``; 0 in empty slots."""
    s = (scores.float() / temperature).masked_fill(~valid, float("-inf"))
    return torch.log_softmax(s, dim=-1).masked_fill(~valid, 0.0)


def choice_ce(scores: torch.Tensor, gold: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """−log q(gold) per question, q = softmax(s) over its choices: rank classification (T-Few, Liu et al. 2022,
    arXiv 2205.05638), the loss whose minimum is the evaluator's argmax on the gold choice. ``[questions]``; 0 for
    an unlabeled question (gold −1)."""
    gold = gold.to(scores.device)
    ce = -choice_log_probs(scores, valid).gather(1, gold.clamp(min=0)[:, None])[:, 0]
    return ce * (gold >= 0)


def choice_kl(student: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor,
              temperature: float = 1.0) -> torch.Tensor:
    """KL(q_teacher ‖ q_student) per question over its choices at temperature τ, times τ² (Hinton et al. 2015:
    the gradients keep their scale as τ changes); the teacher is detached. ``[questions]``, 0 iff they agree."""
    t = choice_log_probs(teacher.detach(), valid, temperature)
    s = choice_log_probs(student, valid, temperature)
    return (t.exp() * (t - s)).sum(-1) * temperature**2
