"""Server optimizers on the aggregated SLM adapter: Flower's FedAvgM, FedAdam, FedYogi and FedAdagrad.

FedAvg takes θ^{t,0} = the mean of the client adapters. A server optimizer instead treats
Δ^t = mean − θ^t as a pseudo-gradient and steps θ^t with momentum (FedAvgM, Hsu et al. 2019) or an
adaptive rule (FedAdam/FedYogi/FedAdagrad, Reddi et al. 2021, "Adaptive Federated Optimization").

The arithmetic is Flower's own strategy classes, not ours. They are fed the *mean* (one reply of
weight 1), never the client updates: the mean is all the server holds under SecAgg+, and what DP
noised, so every optimizer composes with plain FedAvg, SecAgg+ and DP alike. The update gate has
already run on each client update before the mean exists.

The optimizer's state (FedOpt's moments m_t and v_t, FedAvgM's momentum) is saved with each round
(``state``/``load_state``), so a resumed run steps exactly as an uninterrupted one.
"""

from __future__ import annotations

import logging

import numpy as np
from flwr.app import Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvgM, FedYogi

from ..config import FederationSection
from ..models.lora import NamedArrays
from .wire import from_record, layout_of, to_record

STRATEGIES = {"fedavgm": FedAvgM, "fedadam": FedAdam, "fedyogi": FedYogi, "fedadagrad": FedAdagrad}


class ServerOptimizer:
    """θ^{t,0} = Flower's ``strategy`` step from θ^t toward the round's mean (``step``), with its state."""

    def __init__(self, f: FederationSection) -> None:
        self.name = f.strategy
        if self.name == "fedavgm":
            kwargs = {"server_learning_rate": f.server_lr, "server_momentum": f.server_momentum}
        elif self.name == "fedadagrad":
            kwargs = {"eta": f.server_lr, "tau": f.tau}
        else:
            kwargs = {"eta": f.server_lr, "beta_1": f.beta_1, "beta_2": f.beta_2, "tau": f.tau}
        # None keeps Flower's default for that strategy (its docstring lists them)
        self.strategy = STRATEGIES[self.name](**{k: v for k, v in kwargs.items() if v is not None})

    def step(self, t: int, theta_t: NamedArrays, mean: NamedArrays) -> NamedArrays:
        """θ^t moved by the strategy with pseudo-gradient ``mean − θ^t`` (``t`` drives FedAdam's bias correction)."""
        current = to_record(theta_t)  # one packed float32 array (``wire``): the moments are kept packed too
        if isinstance(self.strategy, FedAvgM):
            self.strategy.current_arrays = current
        else:
            self.strategy.current_arrays = {k: a.numpy() for k, a in current.items()}
        reply = Message(RecordDict({"arrays": to_record(mean), "metrics": MetricRecord({"num-examples": 1})}),
                        dst_node_id=0, message_type=MessageType.TRAIN)
        flwr_log = logging.getLogger("flwr")  # its "Received 1 results" line would read as a lost round
        level = flwr_log.level
        flwr_log.setLevel(logging.WARNING)
        try:
            stepped, _ = self.strategy.aggregate_train(t, [reply])
        finally:
            flwr_log.setLevel(level)
        return from_record(stepped, layout_of(theta_t))

    def state(self) -> dict[str, np.ndarray]:
        """The strategy's running state as flat named arrays (empty before the first step)."""
        s = self.strategy
        if isinstance(s, FedAvgM):
            return {f"momentum/{i}": np.asarray(v) for i, v in enumerate(s.momentum_vector or [])}
        return {f"{part}/{k}": np.asarray(v) for part in ("m_t", "v_t") for k, v in (getattr(s, part) or {}).items()}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Put back what ``state`` returned (a resumed run's optimizer goes on where it stopped)."""
        s = self.strategy
        if isinstance(s, FedAvgM):
            vectors = sorted((int(k.split("/", 1)[1]), v) for k, v in state.items() if k.startswith("momentum/"))
            s.momentum_vector = [v for _, v in vectors] or None
            return
        for part in ("m_t", "v_t"):
            got = {k.split("/", 1)[1]: v for k, v in state.items() if k.startswith(f"{part}/")}
            setattr(s, part, got or None)


def make_server_optimizer(f: FederationSection) -> ServerOptimizer | None:
    """None for plain FedAvg (θ^{t,0} is the mean itself)."""
    return None if f.strategy == "fedavg" else ServerOptimizer(f)
