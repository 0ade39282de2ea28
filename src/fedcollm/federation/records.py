"""Adapters <-> Flower records, and the byte counts of what crosses the wire."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict

from ..models.lora import NamedArrays


def to_record(arrays: NamedArrays) -> ArrayRecord:
    return ArrayRecord(OrderedDict((k, Array(np.ascontiguousarray(v))) for k, v in arrays))


def from_record(record: ArrayRecord) -> NamedArrays:
    return [(k, v.numpy()) for k, v in record.items()]


def payload_bytes(content: RecordDict) -> int:
    """Bytes of a message's records as Flower serialises them for the wire (its protobuf encoding)."""
    from flwr.common.serde import recorddict_to_proto

    return int(recorddict_to_proto(content).ByteSize())
