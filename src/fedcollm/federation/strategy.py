"""Flower's FedAvg with a gate: every client update is checked before it can touch the aggregate."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg

from ..models.lora import AdapterError, NamedArrays, check_adapter_arrays
from .records import from_record

log = logging.getLogger(__name__)


class CheckedFedAvg(FedAvg):
    """Sample-weighted FedAvg (Flower's) over the updates that fit the broadcast adapter.

    An update with missing/extra keys, wrong shapes or NaN/Inf is dropped with a log line naming the
    node and the reason; the round goes on with the others (Flower's ``min_train_nodes`` still applies).
    """

    def __init__(self, reference: NamedArrays, **kwargs) -> None:
        super().__init__(**kwargs)
        self.reference = reference
        self.rejected: list[tuple[int, str]] = []

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        accepted = []
        self.rejected = []
        for msg in replies:
            if msg.has_error():
                accepted.append(msg)  # Flower logs and skips error replies itself
                continue
            node = msg.metadata.src_node_id
            try:
                record = msg.content.array_records.get(self.arrayrecord_key)
                if record is None:
                    raise AdapterError(f"no '{self.arrayrecord_key}' ArrayRecord in the reply")
                check_adapter_arrays(self.reference, from_record(record), who=f"node {node}")
            except AdapterError as exc:
                log.warning("round %d: rejected update from node %d: %s", server_round, node, exc)
                self.rejected.append((node, str(exc)))
                continue
            accepted.append(msg)
        return super().aggregate_train(server_round, accepted)
