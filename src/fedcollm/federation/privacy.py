"""The privacy loss of central DP with fixed clipping, as an (ε, δ) a person can read per round.

Each round releases the unweighted mean of m clipped updates plus Gaussian noise of std z·C/m: a
Gaussian mechanism with noise multiplier z on the sum (sensitivity C, every client sampled, no
amplification). Both parts matter: weighting clients by n_k, or noising for K clients when only m < K
were averaged, would let one client move the release by more than the noise covers. Its Rényi DP
at order α is α/(2z²) per round and adds up over T rounds; converted to (ε, δ) with Mironov (2017),
Prop. 3: ε = T·α/(2z²) + log(1/δ)/(α−1), minimised over α (``epsilon``): every client is in every
round, so the neighbouring federations differ by adding or removing one client.

With ``federation.clients_per_round`` each round trains n of the N registered clients, drawn uniformly
without replacement (Flower's sampler), and privacy is amplified by the sampling (``epsilon_sampled``).
The accountant is ``dp-accounting``'s RDP accountant for the Gaussian mechanism on a sample drawn
without replacement (Wang, Balle & Kasiviswanathan 2019, Thm. 27). That bound holds for replace-one
neighbours (N is public), under which the sum of clipped updates has sensitivity 2C: its noise
multiplier is z/2. The two ε are for different neighbour relations; the round's record names which.
"""

from __future__ import annotations

import logging
import math

import numpy as np

ALL_CLIENTS = "gaussian, add/remove one client, every client every round (Mironov 2017)"
SAMPLED = "RDP of the Gaussian on a sample without replacement, replace one client (Wang et al. 2019; dp-accounting)"


def epsilon(noise_multiplier: float, rounds: int, delta: float) -> float:
    """ε after ``rounds`` releases of the Gaussian mechanism with multiplier ``noise_multiplier`` (inf if z=0)."""
    if noise_multiplier <= 0:
        return math.inf
    alphas = np.concatenate([np.linspace(1.01, 10, 200), np.linspace(10, 1000, 500)])
    eps = rounds * alphas / (2 * noise_multiplier**2) + math.log(1 / delta) / (alphas - 1)
    return float(eps.min())


def epsilon_sampled(noise_multiplier: float, rounds: int, delta: float, population: int, sample: int) -> float:
    """ε after ``rounds`` rounds that each noise the sum of ``sample`` of ``population`` clients' clipped
    updates (a uniform draw without replacement) with std z·C: replace-one sensitivity 2C, multiplier z/2."""
    if noise_multiplier <= 0:
        return math.inf
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    accountant = RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    event = dp_accounting.SampledWithoutReplacementDpEvent(
        population, sample, dp_accounting.GaussianDpEvent(noise_multiplier / 2))
    absl = logging.getLogger("absl")  # it warns for each RDP order it cannot evaluate and then skips it
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        accountant.compose(event, rounds)
        return float(accountant.get_epsilon(delta))
    finally:
        absl.setLevel(level)
