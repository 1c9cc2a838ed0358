"""
Keep freed memory in the process for the next tensor, instead of handing it back to the system.

glibc's ``malloc`` serves every block above its mmap threshold (at most 32 MiB) with a fresh
``mmap`` and unmaps it on ``free``. A detector at 800x1333 allocates and frees tensors of tens of
MiB in every layer ((22223, 2048) floats in one encoder FFN), so each of them is page-faulted in
and zeroed by the kernel again, every layer of every image: in Lite-DINO R50's CPU inference that
was ~20% of the time (benchmarks/README.md, "inference steps"). With mmap off and the trim
threshold high, a freed block stays in the heap and the next one of its size reuses it.

The cost: the process keeps its peak heap for its lifetime (it does not shrink after a large
image), which is what a detector serving images wants, and what a CPU training run wants (the
backward's gradients of value are as large). ``train_net.py`` (on CPU), the tools and the
benchmarks switch it on (:func:`reuse_freed_memory`); the library never does on import, since it
changes the whole process. Only glibc (Linux) has these switches; elsewhere this is a no-op that
says so.
"""

import contextlib
import ctypes
import ctypes.util
import functools
import sys

__all__ = ["reuse_freed_memory", "freed_memory_reused"]

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# glibc's defaults, to switch back
_DEFAULT_MMAP_MAX = 65536
_DEFAULT_TRIM_THRESHOLD = 128 * 1024
_KEEP = 1 << 30  # do not trim the heap below 1 GiB of free memory at its top (int for mallopt)


@functools.cache
def _libc():
    """glibc, opened once; None off Linux or where the C library cannot be opened."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def _mallopt():
    libc = _libc()
    fn = getattr(libc, "mallopt", None) if libc is not None else None
    if fn is None:  # musl and other C libraries have no mallopt
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def reuse_freed_memory(enabled: bool = True) -> bool:
    """
    Switch glibc's allocator to keep freed blocks for reuse (``enabled=True``) or back to its
    default values (``False``; its dynamic mmap threshold stays off once any value was set).
    Affects the allocations made afterwards, in the whole process.

    Returns:
        bool: whether the allocator could be configured (False off glibc).
    """
    mallopt = _mallopt()
    if mallopt is None:
        return False
    mmap_max, trim = (0, _KEEP) if enabled else (_DEFAULT_MMAP_MAX, _DEFAULT_TRIM_THRESHOLD)
    return bool(mallopt(_M_MMAP_MAX, mmap_max)) and bool(mallopt(_M_TRIM_THRESHOLD, trim))


@contextlib.contextmanager
def freed_memory_reused(enabled: bool = True):
    """:func:`reuse_freed_memory` for a block; after it glibc's default values again, and the
    memory kept during the block is given back (``malloc_trim``). Yields whether it applied."""
    applied = reuse_freed_memory(enabled) if enabled else False
    try:
        yield applied
    finally:
        if applied:
            reuse_freed_memory(False)
            _libc().malloc_trim(0)
