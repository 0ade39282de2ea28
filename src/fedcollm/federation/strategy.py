"""Flower's FedAvg with a gate: every client update is checked before it can touch the aggregate."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg

from ..models.lora import AdapterError, NamedArrays, check_adapter_arrays
from .wire import from_record, layout_of, to_record

log = logging.getLogger(__name__)

WEIGHT_KEY = "fedcollm-weight"  # the metric the gate writes when a weight function replaces num-examples


def delta_norm(reference: NamedArrays, update: NamedArrays) -> float:
    """L2 norm of ``update − reference`` over all arrays (how far a client moved θ this round)."""
    ref = dict(reference)
    return float(np.sqrt(sum(float(np.sum((np.asarray(v, np.float64) - ref[k]) ** 2)) for k, v in update)))


class CheckedFedAvg(FedAvg):
    """Sample-weighted FedAvg (Flower's) over the updates that fit the broadcast adapter.

    An update with missing/extra keys, wrong shapes, NaN/Inf or an absurd norm is dropped with a log
    line naming the node and the reason; the round goes on with the others. "Absurd" is either above
    ``max_update_norm`` (absolute, on ||θ_k − θ^t||) or more than ``outlier_factor`` × the median of
    the round's update norms (with 3 or more updates, so one wild client cannot set the median).

    ``weight`` maps a client's ``num-examples`` to its weight in the mean (the privacy policy's: 1 for
    every client under DP); without it Flower weighs by ``num-examples`` itself.

    The updates are averaged in an order fixed by their content (``canonical_order``), not by when they
    arrived: a float32 sum depends on its order, and arrival order depends on timing and on node ids that
    Flower's simulation draws afresh in every process, so the same updates give the same θ^{t,0} bit for bit
    (a resumed run repeats an uninterrupted one; a rerun repeats a run).
    """

    def __init__(self, reference: NamedArrays, max_update_norm: float | None = None,
                 outlier_factor: float | None = 10.0, weight: Callable[[int], float] | None = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.reference = reference
        self.max_update_norm = max_update_norm
        self.outlier_factor = outlier_factor
        self.weight = weight
        if weight is not None:
            self.weighted_by_key = WEIGHT_KEY
        self.rejected: list[tuple[int, str]] = []
        self.norms: dict[int, float] = {}
        self.accepted: list[int] = []  # the nodes whose update is in the last aggregate

    def _reject(self, server_round: int, node: int, why: str) -> None:
        log.warning("round %d: rejected update from node %d: %s", server_round, node, why)
        self.rejected.append((node, why))

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        errors, fitting = [], []
        self.rejected, self.norms = [], {}
        for msg in replies:
            if msg.has_error():
                errors.append(msg)  # Flower logs and skips error replies itself
                continue
            node = msg.metadata.src_node_id
            metrics = list(msg.content.metric_records.values())
            if len(metrics) != 1 or "num-examples" not in metrics[0]:
                self._reject(server_round, node, "the reply needs one MetricRecord with num-examples")
                continue
            try:
                record = msg.content.array_records.get(self.arrayrecord_key)
                if record is None:
                    raise AdapterError(f"no '{self.arrayrecord_key}' ArrayRecord in the reply")
                update = from_record(record, layout_of(self.reference))
                check_adapter_arrays(self.reference, update, who="update")
            except AdapterError as exc:
                self._reject(server_round, node, str(exc))
                continue
            self.norms[node] = delta_norm(self.reference, update)
            msg.content[self.arrayrecord_key] = to_record(update)  # float32 for Flower's averaging
            fitting.append(msg)
        accepted = []
        median = float(np.median(list(self.norms.values()))) if len(self.norms) >= 3 else None
        for msg in fitting:
            node = msg.metadata.src_node_id
            norm = self.norms[node]
            if self.max_update_norm is not None and norm > self.max_update_norm:
                self._reject(server_round, node, f"update norm {norm:.4g} exceeds max_update_norm "
                                                 f"{self.max_update_norm:.4g}")
            elif median is not None and self.outlier_factor is not None and norm > self.outlier_factor * median:
                self._reject(server_round, node, f"update norm {norm:.4g} is more than {self.outlier_factor:g}× "
                                                 f"the round's median {median:.4g}")
            else:
                if self.weight is not None:
                    metrics = next(iter(msg.content.metric_records.values()))
                    metrics[WEIGHT_KEY] = float(self.weight(int(metrics["num-examples"])))
                accepted.append(msg)
        self.accepted = [m.metadata.src_node_id for m in accepted]
        return super().aggregate_train(server_round, [*canonical_order(accepted), *errors])


def canonical_order(replies: list[Message]) -> list[Message]:
    """``replies`` sorted by a digest of their arrays and weight: an order that only the updates decide (not the
    other metrics, which hold measurements such as memory that differ from run to run)."""
    def key(msg: Message) -> str:
        h = hashlib.sha256()
        for name, record in sorted(msg.content.array_records.items()):
            h.update(name.encode())
            for k, array in sorted(record.items()):
                h.update(k.encode())
                h.update(array.data)
        for record in msg.content.metric_records.values():
            h.update(repr((record.get("num-examples"), record.get(WEIGHT_KEY))).encode())
        return h.hexdigest()

    return sorted(replies, key=key)
