"""Adapters <-> Flower records, the optional bf16 transfer encoding, and the bytes on the wire.

An adapter travels as an ``ArrayRecord`` of named arrays. With ``federation.transfer_dtype: bfloat16``
each float32 array is sent as its bf16 bits (round to nearest even) in a Flower ``Array`` of our own
``stype``: half the bytes, and the receiver decodes to float32 before anything else touches it
(``codec_mod`` on clients, ``CheckedFedAvg`` on the server), so training, checks, DP and averaging
always work in float32.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict

from ..models.lora import NamedArrays

BF16_STYPE = "fedcollm.bfloat16"  # raw little-endian bf16 bits; Flower's numpy stype has no bf16


def _to_bf16_bits(v: np.ndarray) -> np.ndarray:
    u = np.ascontiguousarray(v, dtype=np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2")  # round to nearest, ties to even


def _from_bf16_bits(a: Array) -> np.ndarray:
    bits = np.frombuffer(a.data, dtype="<u2").astype(np.uint32) << 16
    return bits.view(np.float32).reshape(a.shape)


def to_record(arrays: NamedArrays, dtype: str = "float32") -> ArrayRecord:
    if dtype == "bfloat16":
        return ArrayRecord(OrderedDict(
            (k, Array(dtype="bfloat16", shape=tuple(np.shape(v)), stype=BF16_STYPE, data=_to_bf16_bits(v).tobytes()))
            for k, v in arrays))
    return ArrayRecord(OrderedDict((k, Array(np.ascontiguousarray(v))) for k, v in arrays))


def from_record(record: ArrayRecord) -> NamedArrays:
    """Named float arrays, bf16-encoded ones decoded to float32."""
    return [(k, _from_bf16_bits(v) if v.stype == BF16_STYPE else v.numpy()) for k, v in record.items()]


def is_bf16(record: ArrayRecord) -> bool:
    return any(v.stype == BF16_STYPE for v in record.values())


def codec_mod(msg: Message, ctxt: Context, call_next) -> Message:
    """Client side of the bf16 transfer: decode θ^t on the way in, encode θ_k the same way on the way out."""
    record = msg.content.array_records.get("arrays")
    if record is None or not is_bf16(record):
        return call_next(msg, ctxt)
    msg.content["arrays"] = to_record(from_record(record))
    out = call_next(msg, ctxt)
    if not out.has_error() and "arrays" in out.content.array_records:
        out.content["arrays"] = to_record(from_record(out.content["arrays"]), "bfloat16")
    return out


def payload_bytes(content: RecordDict) -> int:
    """Bytes of a message's records as Flower serialises them for the wire (its protobuf encoding)."""
    from flwr.common.serde import recorddict_to_proto

    return int(recorddict_to_proto(content).ByteSize())
