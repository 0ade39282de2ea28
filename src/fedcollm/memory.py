"""Give freed memory back to the OS between phases (training, KD, evaluation).

glibc keeps freed heap pages for reuse, so a process's footprint stays at the high-water mark of
its most memory-hungry phase even while a lighter one runs; with the server's LLM and SLM (and a
client worker beside it) that adds up to GiBs (see results/bench/README.md, memory). ``release``
runs after each training loop and each evaluation: Python's collector, then ``malloc_trim``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc


@functools.lru_cache(maxsize=1)
def _libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def release() -> None:
    """Collect garbage and return free heap pages to the OS (no-op where libc has no malloc_trim)."""
    gc.collect()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
