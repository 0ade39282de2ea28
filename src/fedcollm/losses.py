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


def kd_kl(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0, top_k: int | None = None
) -> torch.Tensor:
    """KL(p_teacher || p_student) per answer token, averaged, times τ² (Hinton et al.'s gradient scale).

    The teacher is detached here, so each model's KL only moves that model: in FedCoLLM's joint step the
    LLM's target is the SLM's distribution and vice versa. With ``top_k`` both distributions are taken
    over the teacher's k most likely tokens (each renormalised there), as FATE-LLM keeps the top-k
    logits to cut the cost of a 150k vocabulary: a true KL on that support, >= 0 and 0 iff they agree.
    """
    t = teacher.detach().float() / temperature
    s = student.float() / temperature
    if top_k is not None and top_k < t.shape[-1]:
        t, idx = t.topk(top_k, dim=-1)
        s = s.gather(-1, idx)
    t_logp, s_logp = F.log_softmax(t, dim=-1), F.log_softmax(s, dim=-1)
    kl = (t_logp.exp() * (t_logp - s_logp)).sum(-1)
    return kl.mean() * temperature**2
