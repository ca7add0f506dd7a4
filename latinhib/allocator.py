"""Process-wide tuning of glibc's malloc for a ``latinhib enhance`` process.

Left at its defaults, glibc hands every block above a (dynamic) threshold of 128 KiB to
32 MiB straight to ``mmap`` and returns it to the system when freed. A model pass frees
and reallocates tens of megabytes of activations per batch, so each pass starts on fresh
pages that the kernel must fault in and zero: millions of page faults per job, and a model
pass whose speed swings from run to run (docs/SPEED.md#allocator). The CLI
calls :func:`keep_large_blocks` once, before the job; the library never does it on its
own, since it changes the whole process. ``scripts/bench/enhance.py`` applies it to every row.
"""
from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["keep_large_blocks"]

#: mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Blocks below this come from the heap and are reused, not mapped afresh per batch.
MMAP_THRESHOLD = 256 << 20
#: Freed memory is kept for reuse until this much sits unused at the top of a heap.
TRIM_THRESHOLD = 512 << 20


def keep_large_blocks() -> bool:
    """Make glibc reuse freed blocks up to 256 MiB instead of unmapping them (the peak
    memory is the same; it is simply not given back between batches). Returns whether it
    applied: not on other C libraries or systems, and not when the user set glibc's
    ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` (their choice stands)."""
    if not sys.platform.startswith("linux"):
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(None)
        version = libc.gnu_get_libc_version  # glibc only (musl has no such function)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    version.restype = ctypes.c_char_p
    if not version():
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
