"""Server optimizers on the aggregated SLM adapter: FedAvgM, FedAdam, FedYogi and FedAdagrad.

FedAvg takes θ^{t,0} = the mean of the client adapters. A server optimizer instead treats
Δ^t = mean − θ^t as a pseudo-gradient and steps θ^t with momentum (FedAvgM, Hsu et al. 2019) or an
adaptive rule (FedAdam/FedYogi/FedAdagrad, Reddi et al. 2021, "Adaptive Federated Optimization",
Algorithm 2). Each is a few lines of numpy here, written to step exactly as Flower's own strategy
classes of the same names do (their defaults, their bias-corrected η for FedAdam, their operation order
in float32), and checked against them round by round in ``tests/test_server_opt.py``; calling Flower's
classes instead would mean driving them through their message-level aggregation and setting their
internal state by hand.

The optimizer sees only the round's *mean*, never a client update: the mean is all the server holds
under SecAgg+, and what DP noised, so every optimizer composes with plain FedAvg, SecAgg+ and DP alike.
The update gate has already run on each client update before the mean exists.

The state (the first and second moments, or FedAvgM's momentum) is saved with each round (``state`` /
``load_state``), so a resumed run steps exactly as an uninterrupted one. It is kept on the packed θ
vector (``wire``): ``moment1/<key>``, ``moment2/<key>`` or ``momentum/0`` in ``server_opt.safetensors``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..config import FederationSection
from ..models.lora import NamedArrays
from .wire import digest, layout_of

# Flower's defaults per strategy (flwr.serverapp.strategy), kept where the config leaves a knob null
DEFAULTS = {
    "fedavgm": {"server_lr": 1.0, "server_momentum": 0.0},
    "fedadam": {"server_lr": 0.1, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3},
    "fedyogi": {"server_lr": 0.01, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3},
    "fedadagrad": {"server_lr": 0.1, "beta_1": 0.0, "tau": 1e-3},
}


@dataclass(frozen=True)
class Hyper:
    lr: float
    momentum: float = 0.0
    beta_1: float = 0.0
    beta_2: float = 0.0
    tau: float = 0.0


def hyperparameters(f: FederationSection) -> Hyper:
    """The config's knobs, Flower's default where a knob is null."""
    d = DEFAULTS[f.strategy]

    def pick(name: str) -> float:
        value = getattr(f, name, None)
        return float(d.get(name, 0.0) if value is None else value)

    return Hyper(lr=pick("server_lr"), momentum=pick("server_momentum"), beta_1=pick("beta_1"),
                 beta_2=pick("beta_2"), tau=pick("tau"))


def _flat(arrays: NamedArrays) -> np.ndarray:
    return np.concatenate([np.asarray(v, dtype=np.float32).ravel() for _, v in arrays])


def _unflat(flat: np.ndarray, like: NamedArrays) -> NamedArrays:
    out, at = [], 0
    for k, v in like:
        n = int(np.size(v))
        out.append((k, flat[at : at + n].reshape(np.shape(v)).astype(np.float32)))
        at += n
    return out


class ServerOptimizer:
    """θ^{t,0} = θ^t stepped along the pseudo-gradient ``mean − θ^t`` (``step``), with its state."""

    def __init__(self, f: FederationSection) -> None:
        self.name = f.strategy
        self.hp = hyperparameters(f)
        self.m: np.ndarray | None = None  # FedOpt's first moment (FedAvgM: the momentum buffer)
        self.v: np.ndarray | None = None  # FedOpt's second moment
        self.key = ""

    def step(self, t: int, theta_t: NamedArrays, mean: NamedArrays) -> NamedArrays:
        """θ^t moved toward ``mean`` by this optimizer (``t`` drives FedAdam's bias correction)."""
        self.key = f"theta/{digest(layout_of(theta_t))}"
        x, y, hp = _flat(theta_t), _flat(mean), self.hp
        if self.name == "fedavgm":
            if hp.momentum == 0.0 and hp.lr == 1.0:  # plain FedAvg: the mean itself
                return _unflat(y, theta_t)
            grad = x - y  # the pseudo-gradient, as SGD's: updates are the opposite of gradients
            if hp.momentum > 0.0:
                self.m = grad if self.m is None else np.float32(hp.momentum) * self.m + grad
                grad = self.m
            return _unflat(x - np.float32(hp.lr) * grad, theta_t)
        delta = y - x
        m = np.zeros_like(delta) if self.m is None else self.m
        v = np.zeros_like(delta) if self.v is None else self.v
        self.m = np.float32(hp.beta_1) * m + np.float32(1 - hp.beta_1) * delta
        if self.name == "fedadam":
            self.v = np.float32(hp.beta_2) * v + np.float32(1 - hp.beta_2) * delta**2
            # Flower's bias-corrected η (Kingma & Ba's α_t), with its exponent t + 1
            lr = hp.lr * math.sqrt(1 - hp.beta_2 ** (t + 1.0)) / (1 - hp.beta_1 ** (t + 1.0))
        elif self.name == "fedyogi":
            self.v = v - np.float32(1 - hp.beta_2) * delta**2 * np.sign(v - delta**2)
            lr = hp.lr
        else:  # fedadagrad
            self.v = v + delta**2
            lr = hp.lr
        return _unflat(x + np.float32(lr) * self.m / (np.sqrt(self.v) + np.float32(hp.tau)), theta_t)

    def state(self) -> dict[str, np.ndarray]:
        """The running state as named arrays (empty before the first step)."""
        if self.name == "fedavgm":
            return {} if self.m is None else {"momentum/0": self.m}
        return {f"{part}/{self.key}": a for part, a in (("moment1", self.m), ("moment2", self.v)) if a is not None}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Put back what ``state`` returned (a resumed run's optimizer goes on where it stopped)."""
        def part(prefix: str) -> np.ndarray | None:
            got = [np.asarray(v, dtype=np.float32) for k, v in sorted(state.items()) if k.startswith(prefix)]
            return got[0] if got else None

        if self.name == "fedavgm":
            self.m = part("momentum/")
        else:
            self.m, self.v = part("moment1/"), part("moment2/")
        if state and self.m is None:  # another optimizer's or another layout's state: never restart it silently
            raise ValueError(f"{self.name}: the saved server optimizer state holds {', '.join(sorted(state)[:3])}, "
                             "not this optimizer's; resume with the strategy the run was started with")


def make_server_optimizer(f: FederationSection) -> ServerOptimizer | None:
    """None for plain FedAvg (θ^{t,0} is the mean itself)."""
    return None if f.strategy == "fedavg" else ServerOptimizer(f)
