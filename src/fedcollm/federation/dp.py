"""The privacy loss of central DP with fixed clipping, as an (ε, δ) a person can read per round.

Each round releases the unweighted mean of m clipped updates plus Gaussian noise of std z·C/m: a
Gaussian mechanism with noise multiplier z on the sum (sensitivity C, every client sampled, no
amplification). Both parts matter: weighting clients by n_k, or noising for K clients when only m < K
were averaged, would let one client move the release by more than the noise covers. Its Rényi DP
at order α is α/(2z²) per round and adds up over T rounds; converted to (ε, δ) with Mironov (2017),
Prop. 3: ε = T·α/(2z²) + log(1/δ)/(α−1), minimised over α. Flower's own accountant needs the
``dp-accounting`` package and an unmodified FedAvg, so we compute this standard bound here.
"""

from __future__ import annotations

import math

import numpy as np


def epsilon(noise_multiplier: float, rounds: int, delta: float) -> float:
    """ε after ``rounds`` releases of the Gaussian mechanism with multiplier ``noise_multiplier`` (inf if z=0)."""
    if noise_multiplier <= 0:
        return math.inf
    alphas = np.concatenate([np.linspace(1.01, 10, 200), np.linspace(10, 1000, 500)])
    eps = rounds * alphas / (2 * noise_multiplier**2) + math.log(1 / delta) / (alphas - 1)
    return float(eps.min())
