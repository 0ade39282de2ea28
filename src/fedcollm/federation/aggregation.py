"""Steps 1-3 of Algorithm 1 as one call: broadcast θ^t, let the clients train, aggregate.

Two ways, one result type (``TrainRound``):

- ``PlainAggregation``: Flower's FedAvg behind our update gate (``CheckedFedAvg``, made afresh each
  round with that round's θ^t as its reference);
- ``SecureAggregation``: Flower's SecAgg+ (``secagg.py``): the server only ever sees the weighted sum.

With DP on, both work the same way: clients clip their update (Flower's ``fixedclipping_mod``, told C
by ``train_config``) and the server noises the mean with Flower's Gaussian helpers (``add_dp_noise``).

Under DP every client weighs the same (not n_k) and the noise std is z·C/m for the m updates in the
mean: then one client moves the mean by at most C/m, the sensitivity that the noise and ε assume.

Both count the bytes of every message at the Flower level per client (all SecAgg+ stages included)
through ``MeteredGrid``, and both go on without clients that fail or drop, down to ``min_clients``.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy.strategy_utils import sample_nodes
from flwr.supercore.constant import NodeStatus
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM, add_gaussian_noise_inplace, compute_stdv
from tqdm.auto import tqdm

from ..config import Config
from ..models.lora import NamedArrays
from .dp import ALL_CLIENTS, SAMPLED, epsilon, epsilon_sampled
from .secagg import SECAGG_CONFIGS, SECAGG_STAGE, secure_train_round, workflow
from .strategy import UNIT_WEIGHT, CheckedFedAvg
from .wire import from_record, layout_of, payload_bytes, to_record

log = logging.getLogger(__name__)


class MeteredGrid:
    """The server's Grid, counting the bytes of every message to and from each node, and who dropped where.

    Every protocol stage goes through ``send_and_receive``, so a client's total here is what it cost on
    the wire (SecAgg+'s key and share exchanges included). ``dropped`` names each node that replied with
    an error or not at all, with the stage it was in (``train`` for a plain round, else the SecAgg+
    stage: ``setup``, ``share_keys``, ``collect_masked_vectors`` or ``unmask``) and why.
    """

    def __init__(self, grid: Grid, progress: bool = False, round_no: int | None = None) -> None:
        self._grid = grid
        self.sent: Counter[int] = Counter()
        self.received: Counter[int] = Counter()
        self.dropped: dict[int, Drop] = {}
        self.progress, self.round_no = progress, round_no

    def __getattr__(self, name: str):
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        stage = {}
        for m in messages:
            self.sent[m.metadata.dst_node_id] += payload_bytes(m.content)
            stage[m.metadata.dst_node_id] = stage_of(m)
        replies = self._resend_if_restarting(messages, self._exchange(messages, timeout), timeout)
        for r in replies:
            node = r.metadata.src_node_id
            if r.has_error():
                why = r.error.reason.strip().splitlines()[-1][:300] if r.error.reason.strip() else "error reply"
                self.dropped.setdefault(node, Drop(node, stage.get(node, "train"), why))
            else:
                self.received[node] += payload_bytes(r.content)
        for n in stage.keys() - {r.metadata.src_node_id for r in replies}:
            self.dropped.setdefault(n, Drop(n, stage[n], f"no reply within {timeout} s"))
        return replies


    def _exchange(self, messages: list[Message], timeout: float | None) -> list[Message]:
        """Flower's push, then pull until every message has its reply or ``timeout`` passes (what the Grid's own
        ``send_and_receive`` does), with a line that counts the replies as they come: a round of many minutes
        shows its clients finishing (replied k of K, the examples they trained, an ETA) instead of silence."""
        waiting = set(self._grid.push_messages(messages))
        end = None if timeout is None else time.monotonic() + timeout
        stage = stage_of(messages[0]) if messages else "train"
        where = f"round {self.round_no} " if self.round_no is not None else ""
        bar = tqdm(total=len(waiting), desc=f"{where}{stage}: clients replied", unit="client", leave=False,
                   disable=not self.progress or not waiting)
        replies: list[Message] = []
        examples = 0
        while waiting and (end is None or time.monotonic() < end):
            got = list(self._grid.pull_messages(list(waiting)))
            for r in got:
                waiting.discard(r.metadata.reply_to_message_id)
                if not r.has_error() and "metrics" in r.content.metric_records:
                    examples += int(r.content["metrics"].get("num-examples", 0))
            if got:
                replies += got
                bar.update(len(got))
                if examples:
                    bar.set_postfix(examples=examples)
            if waiting:
                time.sleep(PULL_INTERVAL_S)
        bar.close()
        return replies

    def _resend_if_restarting(self, messages: list[Message], replies: list[Message],
                              timeout: float | None) -> list[Message]:
        """Send again, for up to ``RESTART_WAIT_S``, the messages that Flower's simulation handed to a client
        worker Ray was restarting (they never ran: "The actor is restarting"). Without this, one dead worker
        fails healthy clients for as long as its restart takes, and under load that can be a whole round.
        A worker that died running a message answers otherwise ("Socket closed") and is not retried."""
        deadline = time.monotonic() + RESTART_WAIT_S
        while time.monotonic() < deadline:
            again = {r.metadata.src_node_id for r in replies if r.has_error() and RESTARTING in r.error.reason}
            if not again:
                break
            time.sleep(1.0)
            sent = [Message(content=m.content, dst_node_id=m.metadata.dst_node_id,
                            message_type=m.metadata.message_type, group_id=m.metadata.group_id)
                    for m in messages if m.metadata.dst_node_id in again]
            log.info("resending %d message(s) handed to a restarting client worker", len(sent))
            replies = [r for r in replies if r.metadata.src_node_id not in again]
            replies += self._exchange(sent, timeout)
        return replies


RESTARTING = "The actor is restarting"  # Ray's words for a worker it is bringing back (simulation only)
RESTART_WAIT_S = 120.0  # how long such messages are sent again before they count as dropped
PULL_INTERVAL_S = 0.2  # how often the replies are polled (Flower's own Grids poll every 0.1-1 s)


@dataclass(frozen=True)
class Drop:
    """A node that stopped answering in a round: where (the protocol stage) and why (its error, or silence)."""

    node: int
    stage: str
    reason: str


def stage_of(message: Message) -> str:
    """The protocol stage a message belongs to: its SecAgg+ stage, or ``train`` for a plain train message."""
    secure = message.content.config_records.get(SECAGG_CONFIGS)
    return str(secure[SECAGG_STAGE]) if secure is not None and SECAGG_STAGE in secure else "train"


def online_nodes(grid: Grid) -> list[int]:
    """Node ids the SuperLink sees alive (its heartbeat marks a killed SuperNode offline; simulated nodes
    carry no status and are always there)."""
    return sorted(n.node_id for n in grid.get_nodes() if getattr(n, "status", "") in ("", NodeStatus.ONLINE))


def connected_nodes(grid: Grid, want: int, at_least: int, wait_s: float) -> list[int]:
    """The node ids to train this round: all ``want`` once connected, else (after ``wait_s``) those there."""
    deadline = time.monotonic() + wait_s
    while True:
        nodes = online_nodes(grid)
        if len(nodes) >= want:
            return nodes
        if time.monotonic() >= deadline:
            if len(nodes) >= at_least:
                log.warning("%d of %d clients connected after %.0f s: training with those", len(nodes), want, wait_s)
                return nodes
            raise RuntimeError(f"only {len(nodes)} clients connected within {wait_s:.0f} s; "
                               f"federation.min_clients is {at_least}")
        time.sleep(0.5)


class _Online:
    """What Flower's sampler asks a Grid for, answered with the nodes already found online (sorted, so that a
    seeded draw depends on the node ids alone, not on the order the SuperLink lists them)."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = sorted(nodes)

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)


def sample_clients(online: list[int], n: int, seed: int) -> list[int]:
    """The round's clients: ``n`` of the ``online`` nodes drawn by Flower's own sampler (uniformly, without
    replacement: ``strategy_utils.sample_nodes``), or all of them when there are no more than ``n``.

    Flower draws from Python's global RNG; seeding it per round makes the draw a function of (seed, round)
    and the node ids. A deployment's node ids persist, so a rerun samples the same nodes; Flower's
    simulation gives its nodes fresh random ids in every process, so there a rerun samples other (equally
    uniform) sets of clients.
    """
    if n >= len(online):
        return sorted(online)
    random.seed(seed)
    sampled, _ = sample_nodes(_Online(online), n, n)  # online ≥ n, so Flower's wait for nodes never waits
    return sorted(sampled)


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


def contributor(node: int, metrics: dict, unit_weight: bool) -> dict:
    """One update in the mean: its node, its weight in θ^{t,0}, and the metrics the client reported."""
    weight = 1 if unit_weight else int(metrics["num-examples"])
    return {"node": int(node), "weight": weight, **{k: v for k, v in metrics.items() if k != UNIT_WEIGHT}}


def _privacy(cfg: Config, t: int, averaged: int, secure: bool) -> dict:
    """What the round's metrics say about privacy; ``averaged`` = m, the updates in the (unweighted) mean."""
    out: dict = {"secure_aggregation": secure}
    if cfg.dp.enabled:
        d, f = cfg.dp, cfg.federation
        std = compute_stdv(d.noise_multiplier, d.clipping_norm, averaged) if averaged else None
        if f.per_round() < f.num_clients:
            eps, accountant = epsilon_sampled(d.noise_multiplier, t, d.delta, f.num_clients, f.per_round()), SAMPLED
        else:
            eps, accountant = epsilon(d.noise_multiplier, t, d.delta), ALL_CLIENTS
        out["dp"] = {"clipping_norm": d.clipping_norm, "noise_multiplier": d.noise_multiplier,
                     "clients_averaged": averaged, "noise_std": std, "delta": d.delta, "epsilon": eps,
                     "accountant": accountant}
    return out


def train_config(cfg: Config, t: int, config: ConfigRecord) -> ConfigRecord:
    """The round's config for clients: the run's config, the round, and under DP the norm C to clip Δθ_k to."""
    out = ConfigRecord({**dict(config), "server-round": t})
    if cfg.dp.enabled:
        out[KEY_CLIPPING_NORM] = cfg.dp.clipping_norm  # Flower's fixedclipping_mod on each client reads it
    return out


def broadcast(cfg: Config, t: int, nodes: list[int], theta: NamedArrays, config: ConfigRecord) -> list[Message]:
    """Step 1 of a plain round: one train message per node, θ^t packed (``wire``) plus the round's config."""
    content = RecordDict({"arrays": to_record(theta, cfg.federation.transfer_dtype),
                          "config": train_config(cfg, t, config)})
    return [Message(content=content, dst_node_id=n, message_type=MessageType.TRAIN) for n in nodes]


def add_dp_noise(cfg: Config, mean: NamedArrays, averaged: int, seed: int) -> NamedArrays:
    """Central DP on the mean of ``averaged`` clipped updates: Gaussian noise of std z·C/m (Flower's helpers).

    Flower's DP wrapper divides by the number of clients it was built for; when some drop or are
    rejected the mean is over fewer, each moves it by up to C/m, and noise z·C/K would under-protect
    them. The seed makes a resumed run draw the same noise.
    """
    arrays = [np.array(v, dtype=np.float32, copy=True) for _, v in mean]
    np.random.seed(seed)  # Flower's noise draws from numpy's global RNG
    add_gaussian_noise_inplace(arrays, compute_stdv(cfg.dp.noise_multiplier, cfg.dp.clipping_norm, averaged))
    return [(k, v) for (k, _), v in zip(mean, arrays)]


class PlainAggregation:
    """FedAvg over checked updates (the server sees each θ_k, and rejects bad ones by name)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def run(self, t: int, grid: MeteredGrid, nodes: list[int], theta: NamedArrays, config: ConfigRecord,
            timeout: float, seed: int) -> TrainRound:
        """Train exactly ``nodes``, the nodes found online just before the round.

        Flower's sampler (``FedAvg.configure_train``) would wait, without a timeout, until as many nodes
        are connected again: a node that drops between the two looks would stall the round forever.
        """
        f = self.cfg.federation
        gate = CheckedFedAvg(theta, max_update_norm=f.max_update_norm, outlier_factor=f.update_outlier_factor,
                             unit_weights=self.cfg.dp.enabled)  # this round's reference: θ^t
        replies = list(grid.send_and_receive(broadcast(self.cfg, t, nodes, theta, config), timeout=timeout))
        ok = [r for r in replies if not r.has_error()]
        reported = {r.metadata.src_node_id: dict(r.content["metrics"]) for r in ok
                    if "metrics" in r.content.metric_records}  # before the gate adds its weight key
        mean, _ = gate.aggregate_train(t, ok)  # failed clients are left out here, not fatal to the round
        inside = gate.accepted if mean is not None else []
        theta_avg = None if mean is None else from_record(mean, layout_of(theta))
        if theta_avg is not None and self.cfg.dp.enabled:
            theta_avg = add_dp_noise(self.cfg, theta_avg, len(inside), seed)
        return TrainRound(
            theta=theta_avg,
            contributors=[contributor(n, reported[n], self.cfg.dp.enabled) for n in inside],
            dropped=list(grid.dropped.values()),
            rejected=list(gate.rejected),
            privacy=_privacy(self.cfg, t, len(inside), secure=False),
        )


class SecureAggregation:
    """FedAvg through SecAgg+: no per-client checks are possible, by design; the mean is checked instead."""

    def __init__(self, cfg: Config, max_weight: float) -> None:
        self.cfg = cfg
        self.workflow = workflow(cfg.secagg, max_weight)

    def run(self, t: int, grid: MeteredGrid, nodes: list[int], theta: NamedArrays, config: ConfigRecord,
            timeout: float, seed: int) -> TrainRound:
        res = secure_train_round(grid, nodes, to_record(theta), train_config(self.cfg, t, config), t, self.workflow)
        mean = None if res.aggregate is None else from_record(res.aggregate, layout_of(theta))
        rejected = []
        if mean is not None and not all(np.all(np.isfinite(v)) for _, v in mean):
            # SecAgg+ hides whose update it was: the whole mean goes, every masked update with it
            rejected = [(n, "the unmasked aggregate holds NaN/Inf: round discarded") for n, _ in res.metrics]
            mean = None
        inside = res.metrics if mean is not None else []  # every masked vector in the sum, unmask drops included
        if mean is not None and self.cfg.dp.enabled:  # clients sent unit weights: the unmasked mean is over m
            mean = add_dp_noise(self.cfg, mean, len(inside), seed)
        return TrainRound(theta=mean, contributors=[contributor(n, m, self.cfg.dp.enabled) for n, m in inside],
                          dropped=list(grid.dropped.values()), rejected=rejected,
                          privacy=_privacy(self.cfg, t, len(inside), secure=True))
