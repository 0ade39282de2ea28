"""Steps 1-3 of Algorithm 1 as one call: broadcast θ^t, let the clients train, aggregate.

Two ways, one result type (``TrainRound``):

- ``PlainAggregation``: Flower's FedAvg behind our update gate (``CheckedFedAvg``, made afresh each
  round with that round's θ^t as its reference);
- ``SecureAggregation``: Flower's SecAgg+ (``secagg.py``): the server only ever sees the weighted sum.

Both ask one ``PrivacyPolicy`` (``privacy.py``) for the clients' weights, the clip they are told and the
noise on the mean, and both reach the clients through ``transport.MeteredGrid``, so they count the same
bytes and go on without clients that fail or drop, down to ``min_clients``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from flwr.app import ConfigRecord, RecordDict

from ..config import Config
from ..models.lora import NamedArrays
from .privacy import PrivacyPolicy
from .secagg import secure_train_round, workflow
from .strategy import CheckedFedAvg
from .transport import Drop, MeteredGrid, train_messages
from .wire import from_record, layout_of, to_record


@dataclass
class TrainRound:
    """θ^{t,0} and what the server may know about how it came about.

    ``contributors`` are exactly the updates inside θ^{t,0}, each with the weight it had in the mean
    (θ^{t,0} = Σ w_k θ_k / Σ w_k; w_k = n_k, or 1 under DP) and the plaintext metrics it reported.
    ``dropped`` says which nodes stopped answering and in which stage: under SecAgg+ a node that drops
    in ``unmask`` already has its masked update in the sum, so it is a contributor *and* dropped.
    ``rejected`` are updates the gate refused, with the reason.
    """

    theta: NamedArrays | None
    contributors: list[dict] = field(default_factory=list)
    dropped: list[Drop] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)
    privacy: dict = field(default_factory=dict)

    @property
    def accepted(self) -> int:
        return len(self.contributors)

    def record(self) -> dict:
        """The round's account of its clients, as logged: a reader recomputes θ^{t,0}'s weights from it."""
        return {"contributors": self.contributors,
                "dropped": [{"node": d.node, "stage": d.stage, "reason": d.reason} for d in self.dropped],
                "rejected": [{"node": n, "reason": why} for n, why in self.rejected]}

    def problems(self) -> str:
        """One line on what went wrong this round (for the error that stops a run)."""
        drops = "; ".join(f"node {d.node} dropped in {d.stage}: {d.reason}" for d in self.dropped) or "none"
        rejected = "; ".join(f"node {n}: {why}" for n, why in self.rejected) or "none"
        return f"dropped: {drops}; rejected: {rejected}"


def contributor(node: int, metrics: dict, policy: PrivacyPolicy) -> dict:
    """One update in the mean: its node, its weight in θ^{t,0}, and the metrics the client reported."""
    return {"node": int(node), "weight": policy.weight(int(metrics["num-examples"])), **metrics}


def train_config(policy: PrivacyPolicy, t: int, config: ConfigRecord) -> ConfigRecord:
    """The round's config for clients: the run's config, the round, and what the privacy policy tells them."""
    return ConfigRecord({**dict(config), "server-round": t, **policy.client_config()})


def broadcast(cfg: Config, policy: PrivacyPolicy, t: int, nodes: list[int], theta: NamedArrays,
              config: ConfigRecord):
    """Step 1 of a plain round: one train message per node, θ^t packed (``wire``) plus the round's config."""
    content = RecordDict({"arrays": to_record(theta, cfg.federation.transfer_dtype),
                          "config": train_config(policy, t, config)})
    return train_messages(nodes, content)


class PlainAggregation:
    """FedAvg over checked updates (the server sees each θ_k, and rejects bad ones by name)."""

    def __init__(self, cfg: Config, policy: PrivacyPolicy) -> None:
        self.cfg, self.policy = cfg, policy

    def run(self, t: int, grid: MeteredGrid, nodes: list[int], theta: NamedArrays, config: ConfigRecord,
            timeout: float, seed: int) -> TrainRound:
        """Train exactly ``nodes``, the nodes found online just before the round.

        Flower's sampler (``FedAvg.configure_train``) would wait, without a timeout, until as many nodes
        are connected again: a node that drops between the two looks would stall the round forever.
        """
        f = self.cfg.federation
        gate = CheckedFedAvg(theta, max_update_norm=f.max_update_norm, outlier_factor=f.update_outlier_factor,
                             weight=self.policy.weigher())  # this round's reference: θ^t
        messages = broadcast(self.cfg, self.policy, t, nodes, theta, config)
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        ok = [r for r in replies if not r.has_error()]
        reported = {r.metadata.src_node_id: dict(r.content["metrics"]) for r in ok
                    if "metrics" in r.content.metric_records}  # before the gate adds its weight key
        mean, _ = gate.aggregate_train(t, ok)  # failed clients are left out here, not fatal to the round
        inside = gate.accepted if mean is not None else []
        theta_avg = None if mean is None else self.policy.noise(from_record(mean, layout_of(theta)), len(inside), seed)
        return TrainRound(
            theta=theta_avg,
            contributors=[contributor(n, reported[n], self.policy) for n in inside],
            dropped=list(grid.dropped.values()),
            rejected=list(gate.rejected),
            privacy=self.policy.record(t, len(inside)),
        )


class SecureAggregation:
    """FedAvg through SecAgg+: no per-client checks are possible, by design; the mean is checked instead."""

    def __init__(self, cfg: Config, policy: PrivacyPolicy, max_weight: float) -> None:
        self.cfg, self.policy = cfg, policy
        self.workflow = workflow(cfg.secagg, max_weight)

    def run(self, t: int, grid: MeteredGrid, nodes: list[int], theta: NamedArrays, config: ConfigRecord,
            timeout: float, seed: int) -> TrainRound:
        res = secure_train_round(grid, nodes, to_record(theta), train_config(self.policy, t, config), t, self.workflow)
        mean = None if res.aggregate is None else from_record(res.aggregate, layout_of(theta))
        rejected = []
        if mean is not None and not all(np.all(np.isfinite(v)) for _, v in mean):
            # SecAgg+ hides whose update it was: the whole mean goes, every masked update with it
            rejected = [(n, "the unmasked aggregate holds NaN/Inf: round discarded") for n, _ in res.metrics]
            mean = None
        inside = res.metrics if mean is not None else []  # every masked vector in the sum, unmask drops included
        if mean is not None:  # under DP the clients sent unit weights: the unmasked mean is over m
            mean = self.policy.noise(mean, len(inside), seed)
        return TrainRound(theta=mean, contributors=[contributor(n, m, self.policy) for n, m in inside],
                          dropped=list(grid.dropped.values()), rejected=rejected,
                          privacy=self.policy.record(t, len(inside)))
