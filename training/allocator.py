"""Keep freed memory in the process instead of handing it back to the kernel (glibc only).

A CPU training step allocates activations, logits and their gradients of tens to hundreds of MB
each. glibc serves every block above its mmap threshold (at most 32 MB) with a fresh mapping and
unmaps it on free, so each step faults all of it in again, page by page: ~217,000 minor faults a
micro-batch of SmolLM2-135M SFT, and half the CPU time of a 2-thread run spent in the kernel
(docs/demo.md). With mmap off and trimming off, freed blocks stay in the heap for the next step;
the process keeps its peak resident size, which a training run reaches anyway. This is what
`MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...` would do, set from inside the process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Turn off glibc's mmap for large blocks and heap trimming; False where that is not possible
    (not Linux, or a C library without mallopt, e.g. musl): nothing changes there."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    # -1 as the trim threshold is SIZE_MAX inside glibc (the value is taken as size_t): never trim.
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, -1))
