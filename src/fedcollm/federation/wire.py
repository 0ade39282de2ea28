"""Adapters <-> Flower records: one packed array per adapter, optional bf16, and bytes on the wire.

An adapter is a list of named arrays (96 for LoRA r=8 on q/v of Qwen2.5-0.5B). Flower sends every
array of a record as objects of its own, at ~1 KB of envelope each, so θ travels as ONE flat float32
array, in state-dict order, under the key ``theta/<layout digest>``: the digest (of the names and
shapes) lets a receiver refuse an adapter of another layout in one line, and its own layout (its
model's, or the server's reference θ) splits the vector back into named arrays. FedAvg, SecAgg+ and
DP clipping act on the flat vector exactly as on the arrays (means and norms do not care).

With ``federation.transfer_dtype: bfloat16`` the vector is sent as bf16 bits (round to nearest even)
in a Flower ``Array`` of our own ``stype``: half the bytes. The receiver decodes to float32 before
anything else touches it (``codec_mod`` on clients, ``CheckedFedAvg`` on the server).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict

from ..models.lora import AdapterError, NamedArrays

BF16_STYPE = "fedcollm.bfloat16"  # raw little-endian bf16 bits; Flower's numpy stype has no bf16
Layout = list[tuple[str, tuple[int, ...]]]


def layout_of(arrays: Sequence[tuple[str, np.ndarray]]) -> Layout:
    return [(k, tuple(np.shape(v))) for k, v in arrays]


def digest(layout: Layout) -> str:
    return hashlib.sha1(repr(layout).encode()).hexdigest()[:16]


def _to_bf16_bits(v: np.ndarray) -> np.ndarray:
    u = np.ascontiguousarray(v, dtype=np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2")  # round to nearest, ties to even


def _bf16_array(v: np.ndarray) -> Array:
    """A float32 array sent as bf16 bits in a Flower Array of our own ``stype`` (half the bytes)."""
    return Array(dtype="bfloat16", shape=tuple(v.shape), stype=BF16_STYPE, data=_to_bf16_bits(v).tobytes())


def _decode(a: Array) -> np.ndarray:
    if a.stype != BF16_STYPE:
        return a.numpy()
    return (np.frombuffer(a.data, dtype="<u2").astype(np.uint32) << 16).view(np.float32).reshape(a.shape)


def to_record(arrays: NamedArrays, dtype: str = "float32") -> ArrayRecord:
    """θ as one flat array (float32, or bf16 bits) keyed by its layout's digest."""
    flat = np.concatenate([np.asarray(v, dtype=np.float32).ravel() for _, v in arrays]) if arrays else np.zeros(0)
    key = f"theta/{digest(layout_of(arrays))}"
    if dtype == "bfloat16":
        return ArrayRecord({key: _bf16_array(flat)})
    return ArrayRecord({key: Array(np.ascontiguousarray(flat, dtype=np.float32))})


def from_record(record: ArrayRecord, layout: Layout) -> NamedArrays:
    """Split a packed θ back into named float32 arrays; refuse another layout (keys or shapes differ)."""
    if len(record) != 1:
        raise AdapterError(f"expected one packed adapter array, got {len(record)} arrays")
    ((key, array),) = record.items()
    want = f"theta/{digest(layout)}"
    n = sum(int(np.prod(s)) for _, s in layout)
    if key != want:
        raise AdapterError(f"adapter layout differs from this side's ({key!r} vs {want!r}, {int(np.prod(array.shape))} "
                           f"vs {n} values): another LoRA config (r, targets) or model")
    flat = _decode(array).ravel()
    if flat.size != n:
        raise AdapterError(f"packed adapter has {flat.size} values, its layout needs {n}")
    out, start = [], 0
    for k, shape in layout:
        size = int(np.prod(shape))
        out.append((k, flat[start:start + size].reshape(shape)))
        start += size
    return out


def is_bf16(record: ArrayRecord) -> bool:
    return any(v.stype == BF16_STYPE for v in record.values())


def codec_mod(msg: Message, ctxt: Context, call_next) -> Message:
    """Client side of the bf16 transfer: decode θ^t on the way in, encode θ_k the same way on the way out."""
    record = msg.content.array_records.get("arrays")
    if record is None or not is_bf16(record):
        return call_next(msg, ctxt)
    msg.content["arrays"] = ArrayRecord({k: Array(_decode(v)) for k, v in record.items()})
    out = call_next(msg, ctxt)
    if not out.has_error() and "arrays" in out.content.array_records:
        out.content["arrays"] = ArrayRecord({k: _bf16_array(v.numpy()) for k, v in out.content["arrays"].items()})
    return out


def payload_bytes(content: RecordDict) -> int:
    """Bytes of a message's records as Flower sends them: each record and array is an object of its own on the
    wire, serialized by its public ``deflate()``, so this is the sum over the object and its ``children``
    (``bench/comm.py`` measures the exact Fleet-API total, envelopes included)."""
    return _object_bytes(content)


def _object_bytes(obj) -> int:
    return len(obj.deflate()) + sum(_object_bytes(child) for child in (obj.children or {}).values())
