"""Is a difference in accuracy real? Paired tests over per-question outcomes.

Two methods scored on the same questions give two paired vectors of outcomes (1 = right, 0 = wrong;
a fraction for a mean over clients). With 100-400 questions a few points of difference is often
noise, so the report states each claim with:

- a paired bootstrap 95% interval of the accuracy difference (resample questions, keep the pairs), and
- McNemar's exact test on the questions where exactly one method is right (binary outcomes only).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def outcomes(bits: str) -> np.ndarray:
    """A ``"0110..."`` string (as the scorer writes it) as a float vector."""
    return np.frombuffer(bits.encode(), dtype=np.uint8).astype(np.float64) - ord("0")


def paired_bootstrap(a: Sequence[float], b: Sequence[float], iters: int = 10_000, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``a - b`` and its percentile bootstrap interval, resampling questions with replacement."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.size == 0:
        raise ValueError("paired_bootstrap needs at least one question")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(iters, d.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(d.mean()), float(lo), float(hi)


def paired_bootstrap_seeds(a: np.ndarray, b: np.ndarray, iters: int = 10_000, seed: int = 0,
                           level: float = 0.95) -> tuple[float, float, float]:
    """``paired_bootstrap`` for several training seeds: ``a`` and ``b`` are ``[seeds, questions]``, row s of
    each the same seed's run on the same questions. The mean of ``a - b`` over seeds and questions, and its
    two-level percentile interval: each resample draws seeds with replacement and questions with replacement
    (the same questions for every seed drawn), so the interval holds the seed-to-seed spread as well as the
    questions'. With one seed it is ``paired_bootstrap``'s interval."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.ndim != 2 or d.size == 0:
        raise ValueError("paired_bootstrap_seeds needs [seeds, questions] outcomes")
    n_seeds, n_q = d.shape
    rng = np.random.default_rng(seed)
    means = np.empty(iters)
    for i in range(iters):
        per_seed = d[:, rng.integers(0, n_q, n_q)].mean(axis=1)
        means[i] = per_seed[rng.integers(0, n_seeds, n_seeds)].mean()
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(d.mean()), float(lo), float(hi)


def mcnemar_exact(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided exact McNemar p-value; None when an outcome is not 0/1 (e.g. a mean over clients)."""
    a, b = np.asarray(a), np.asarray(b)
    if not (np.isin(a, (0, 1)).all() and np.isin(b, (0, 1)).all()):
        return None
    only_a, only_b = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def wilson(correct: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score 95% interval of an accuracy (correct of n), as fractions: sound near 0 and 1 too."""
    if n <= 0:
        return float("nan"), float("nan")
    p = correct / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


# The paper's FedCoLLM LLM is 0-3 points below Centralized (97-99 %): "≈" means within 3 points.
EQUIVALENCE_MARGIN = 3.0


@dataclass(frozen=True)
class Comparison:
    """``a`` vs ``b`` on ``n`` paired questions; differences in accuracy points (percent)."""

    n: int
    diff: float
    lo: float
    hi: float
    p: float | None
    seeds: int = 1  # training seeds pooled (each seed's run on the same n questions)

    def verdict(self, expect: str, margin: float = EQUIVALENCE_MARGIN) -> str:
        """Plain words for a claim ``a > b`` (``expect="better"``), ``a ≈ b`` (``expect="same"``) or ``a ≥ b``
        (``expect="no harm"``).

        "≈" is an equivalence claim: it holds only when the whole interval lies within ±``margin``
        points; an interval that contains 0 but is wider says too little either way.
        """
        if expect == "no harm":  # a ≥ b: only an interval wholly below 0 says a is worse
            return "does not hold: significantly worse" if self.hi < 0 else "holds: not significantly worse"
        if expect == "same":
            if self.lo > 0 or self.hi < 0:
                return f"does not hold: significantly {'higher' if self.lo > 0 else 'lower'}"
            if -margin <= self.lo and self.hi <= margin:
                return f"holds: within ±{margin:g} points"
            return f"not shown: no significant difference, but the interval is wider than ±{margin:g} points"
        if self.lo > 0:
            return "holds (significant)"
        if self.hi < 0:
            return "does not hold: significantly worse"
        if self.diff == 0:  # equal accuracy (identical answers, or as many gained as lost): no direction
            return "not shown: no difference"
        return "not shown: " + ("direction as claimed" if self.diff > 0 else "opposite direction") + ", within noise"


def compare(a: Sequence[float], b: Sequence[float], iters: int = 10_000, seed: int = 0) -> Comparison:
    diff, lo, hi = paired_bootstrap(a, b, iters, seed)
    return Comparison(len(a), 100 * diff, 100 * lo, 100 * hi, mcnemar_exact(a, b))


def compare_seeds(a: np.ndarray, b: np.ndarray, iters: int = 10_000, seed: int = 0) -> Comparison:
    """``compare`` over ``[seeds, questions]`` outcomes (``paired_bootstrap_seeds``); with one seed, ``compare``.
    McNemar's test assumes independent pairs, which one question's runs under several seeds are not: no p."""
    a, b = np.atleast_2d(np.asarray(a, np.float64)), np.atleast_2d(np.asarray(b, np.float64))
    if a.shape[0] == 1:
        return compare(a[0], b[0], iters, seed)
    diff, lo, hi = paired_bootstrap_seeds(a, b, iters, seed)
    return Comparison(a.shape[1], 100 * diff, 100 * lo, 100 * hi, None, seeds=a.shape[0])
