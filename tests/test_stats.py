"""The paired tests behind the report's claims: known values, and intervals that cover the truth."""

from __future__ import annotations

import numpy as np
import pytest

from fedcollm.stats import compare, mcnemar_exact, outcomes, paired_bootstrap


def test_outcomes_parses_the_scorers_bit_string():
    assert outcomes("0110").tolist() == [0.0, 1.0, 1.0, 0.0]


def test_mcnemar_exact_known_values():
    a = np.array([1] * 10 + [0] * 5)
    b = np.array([0] * 10 + [0] * 5)
    assert mcnemar_exact(a, b) == pytest.approx(2 / 2**10)  # 10 discordant pairs, all one way
    assert mcnemar_exact(a, a) == 1.0
    # 6 vs 4 discordant: p = 2 * P(X <= 4), X ~ Bin(10, 1/2) = 2 * 386/1024
    a = np.array([1] * 6 + [0] * 4)
    assert mcnemar_exact(a, 1 - a) == pytest.approx(2 * 386 / 1024)
    assert mcnemar_exact([0.5, 1.0], [0, 1]) is None  # a mean over clients is not binary


def test_bootstrap_interval_covers_the_true_difference():
    rng = np.random.default_rng(1)
    covered = 0
    for rep in range(40):
        a = (rng.random(400) < 0.60).astype(float)
        b = (rng.random(400) < 0.50).astype(float)
        _, lo, hi = paired_bootstrap(a, b, iters=2000, seed=rep)
        covered += lo <= 0.10 <= hi
    assert covered >= 34  # a 95% interval: expect ~38 of 40


def test_verdicts():
    a = np.array([1.0] * 60 + [0.0] * 40)
    b = np.array([0.0] * 30 + [1.0] * 30 + [0.0] * 40)
    clear = compare(a, b)  # a is right on 30 more questions
    assert clear.diff == pytest.approx(30.0) and clear.lo > 0
    assert clear.verdict("better") == "holds (significant)"
    assert clear.verdict("same").startswith("does not hold: significantly higher")
    assert compare(b, a).verdict("better") == "does not hold: significantly worse"
    close = compare(a[:10], np.r_[a[:9], 0.0])  # 10 questions: no difference found, but a wide interval
    assert close.verdict("better").startswith("not shown: direction as claimed")
    assert close.verdict("same").startswith("not shown: no significant difference, but the interval is wider")
    many = np.tile(a, 20)
    same = compare(many, np.r_[many[:-1], 1 - many[-1]])  # 2000 questions, one differs
    assert same.verdict("same") == "holds: within ±3 points"
    swapped = a.copy()
    swapped[:5], swapped[-5:] = 0.0, 1.0  # five answers lost, five gained: level, but not identical
    level = compare(a, swapped)
    assert level.diff == 0 and level.lo < 0 < level.hi and level.verdict("better") == "not shown: no difference"
    assert compare(a, a).verdict("better") == "not shown: no difference"


def test_the_seed_interval_holds_the_seeds_spread_as_well_as_the_questions():
    import numpy as np

    from fedcollm.stats import compare, compare_seeds

    rng = np.random.default_rng(3)
    a = (rng.random(400) < 0.6).astype(float)
    b = (rng.random(400) < 0.5).astype(float)
    one = compare_seeds(a[None], b[None])
    assert one == compare(a, b) and one.seeds == 1  # one seed: the plain paired bootstrap, McNemar included
    same = compare_seeds(np.stack([a] * 3), np.stack([b] * 3))  # three seeds that agree: no seed spread
    assert same.seeds == 3 and same.p is None and same.n == 400
    assert abs(same.diff - one.diff) < 1e-9 and abs((same.hi - same.lo) - (one.hi - one.lo)) < 1.5
    # three seeds that disagree (one gains 20 points, two gain nothing): the mean is as pooled, the interval wider
    zeros = np.flatnonzero(b == 0)[:80]
    lucky = b.copy()
    lucky[zeros] = 1.0
    gains = np.stack([lucky, b, b])
    spread = compare_seeds(gains, np.stack([b, b, b]))
    pooled = compare(gains.ravel(), np.tile(b, 3))
    assert abs(spread.diff - pooled.diff) < 1e-9
    assert spread.hi - spread.lo > 2 * (pooled.hi - pooled.lo)
