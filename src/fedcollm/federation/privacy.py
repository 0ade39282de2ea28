"""Privacy of a round, as one policy: each client's weight in the mean, the clip, the noise, and ε.

``PrivacyPolicy`` is what plain and secure aggregation (and the SecAgg+ bridge on each client) ask; no
other module decides who weighs what under DP or how much noise the mean gets.

Central DP with fixed clipping: each client clips Δθ_k to norm C (Flower's ``fixedclipping_mod``, told
C in the round's config under ``CLIPPING_NORM_KEY``) and the server adds Gaussian noise of std z·C/m to
the unweighted mean of the m updates it averaged. Both parts matter: weighting clients by n_k, or
noising for K clients when only m < K were averaged, would let one client move the release by more
than the noise covers. So under DP every client weighs 1, whatever its n_k.

Each round is then a Gaussian mechanism with noise multiplier z on the sum (sensitivity C). Its Rényi
DP at order α is α/(2z²) per round and adds up over T rounds; converted to (ε, δ) with Mironov (2017),
Prop. 3: ε = T·α/(2z²) + log(1/δ)/(α−1), minimised over α (``epsilon``): every client is in every
round, so the neighbouring federations differ by adding or removing one client.

With ``federation.clients_per_round`` each round trains n of the N registered clients, drawn uniformly
without replacement, and privacy is amplified by the sampling (``epsilon_sampled``). The accountant is
``dp-accounting``'s RDP accountant for the Gaussian mechanism on a sample drawn without replacement
(Wang, Balle & Kasiviswanathan 2019, Thm. 27). That bound holds for replace-one neighbours (N is
public), under which the sum of clipped updates has sensitivity 2C: its noise multiplier is z/2. The
two ε are for different neighbour relations; the round's record names which.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..config import Config, DPSection, Engine
from ..models.lora import NamedArrays

ALL_CLIENTS = "gaussian, add/remove one client, every client every round (Mironov 2017)"
# The round-config key Flower's public ``fixedclipping_mod`` reads C from (Flower defines the name in
# its supercore package, which is not public API: tests/test_privacy.py checks the two stay equal).
CLIPPING_NORM_KEY = "clipping_norm"
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


def weight_of(num_examples: int, clipped: bool) -> int:
    """A client's weight in θ^{t,0}: n_k, or 1 when its update was clipped for DP (the module docstring says why)."""
    return 1 if clipped else int(num_examples)


def client_weight(round_config: dict, num_examples: int) -> int:
    """The weight a client reports for the masked SecAgg+ sum, read off the round's config as the server set it."""
    return weight_of(num_examples, CLIPPING_NORM_KEY in round_config)


@dataclass(frozen=True)
class PrivacyPolicy:
    """How a round protects its clients: ``dp`` (clip, unit weights, noise) and whether SecAgg+ hides each θ_k."""

    dp: DPSection
    secure: bool
    population: int  # N, the registered clients
    per_round: int  # n, the clients a round trains

    @classmethod
    def of(cls, cfg: Config, engine: Engine) -> PrivacyPolicy:
        """The policy ``cfg`` asks for when ``engine`` drives the run (it decides SecAgg+'s default)."""
        f = cfg.federation
        return cls(cfg.dp, cfg.secure_aggregation(engine), f.num_clients, f.per_round())

    def weight(self, num_examples: int) -> int:
        return weight_of(num_examples, self.dp.enabled)

    def weigher(self) -> Callable[[int], int] | None:
        """The gate's weight function: None (Flower's own num-examples weighting) unless DP changes it."""
        return self.weight if self.dp.enabled else None

    def client_config(self) -> dict[str, float]:
        """What the round's config tells each client: under DP the norm C its update is clipped to."""
        return {CLIPPING_NORM_KEY: float(self.dp.clipping_norm)} if self.dp.enabled else {}

    def max_weight(self, largest_client: Callable[[], int]) -> float:
        """SecAgg+'s bound on one client's weight (it scales weights into [0, 1]): 1 under DP, else
        ``largest_client()`` (the configured bound or the largest n_k; only asked when needed)."""
        return 1.0 if self.dp.enabled else float(largest_client())

    def noise_std(self, averaged: int) -> float:
        """z·C/m: the std of the noise on the mean of ``averaged`` clipped updates."""
        return self.dp.noise_multiplier * self.dp.clipping_norm / averaged

    def noise(self, mean: NamedArrays, averaged: int, seed: int) -> NamedArrays:
        """``mean`` with N(0, (z·C/m)²) added to every entry under DP (unchanged without DP).

        The std is for the m updates actually averaged: noise z·C/K when only m < K arrived would
        under-protect them. Drawn from a generator seeded per round, so a resumed run adds the same noise.
        """
        if not self.dp.enabled:
            return mean
        rng, std = np.random.default_rng(seed), self.noise_std(averaged)
        return [(k, (np.asarray(v, np.float32) + rng.normal(0.0, std, np.shape(v))).astype(np.float32))
                for k, v in mean]

    def record(self, t: int, averaged: int) -> dict:
        """What the round's log says about privacy; ``averaged`` = m, the updates in the mean."""
        out: dict = {"secure_aggregation": self.secure}
        if self.dp.enabled:
            d = self.dp
            if self.per_round < self.population:
                eps = epsilon_sampled(d.noise_multiplier, t, d.delta, self.population, self.per_round)
                accountant = SAMPLED
            else:
                eps, accountant = epsilon(d.noise_multiplier, t, d.delta), ALL_CLIENTS
            out["dp"] = {"clipping_norm": d.clipping_norm, "noise_multiplier": d.noise_multiplier,
                         "clients_averaged": averaged, "noise_std": self.noise_std(averaged) if averaged else None,
                         "delta": d.delta, "epsilon": eps, "accountant": accountant}
        return out
