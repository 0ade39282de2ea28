"""Choosing bf16 or fp32 from the hardware, because the fast path differs by machine.

bf16 is ≈4× fp32 matmul throughput on CPUs with AVX-512 BF16 or AMX, and the usual choice on a GPU;
on an AVX2-only CPU (this project's 2-core AMD EPYC, measured: results/precision_probe.json) bf16
matmul is several times *slower* than fp32, because PyTorch emulates it. ``auto`` picks by the
instruction set instead of guessing.
"""

from __future__ import annotations

import contextlib
import functools
import platform
from pathlib import Path

import torch


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_bf16", "amx_bf16"))


def cpu_info() -> dict:
    """The CPU's model name and the instruction-set flags that decide its speed (what results are recorded with)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"model": platform.processor(), "flags": {}}
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "")
    flags_line = next((ln.split(":", 1)[1] for ln in text.splitlines() if ln.startswith("flags")), "")
    flags = set(flags_line.split())
    relevant = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
    return {"model": model, "flags": {f: f in flags for f in relevant}}


def resolve_precision(precision: str) -> str:
    """``bf16``/``fp32`` as given; ``auto``: bf16 on a bf16-capable GPU or CPU, else fp32."""
    if precision != "auto":
        return precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


PRECISIONS = ("auto", "bf16", "fp32")


def torch_dtype(precision: str) -> torch.dtype:
    """The weights' dtype for a precision (``auto`` resolved for this machine): bf16 only where it is fast."""
    return torch.bfloat16 if resolve_precision(precision) == "bf16" else torch.float32


def autocast(device_type: str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """torch's autocast to ``dtype`` on that device, or nothing at all when ``dtype`` is None (fp32)."""
    return torch.autocast(device_type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def autocast_dtype(precision: str) -> torch.dtype | None:
    """What to autocast matmuls to: bf16 where it is fast, else nothing (fp32 as the weights are)."""
    return torch.bfloat16 if resolve_precision(precision) == "bf16" else None
