import ctypes
import ctypes.util
import sys

import pytest
import torch

from lite_detr.utils.malloc import freed_memory_reused, reuse_freed_memory

MIB = 2**20


class _MallInfo2(ctypes.Structure):
    _FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
    _fields_ = [(name, ctypes.c_size_t) for name in _FIELDS.split()]


def _mallinfo():
    """glibc's heap counters: mmapped bytes (hblkhd) and free bytes kept in the heap (fordblks)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.mallinfo2  # glibc >= 2.33
    except (OSError, AttributeError):
        pytest.skip("needs glibc's mallinfo2")
    fn.restype = _MallInfo2
    return fn


def _held_and_freed(mallinfo, mib=96):
    """(mmapped MiB while a tensor of ``mib`` MiB is held, free heap MiB after it is freed)."""
    before = mallinfo()
    t = torch.empty(mib * MIB // 4)
    held = mallinfo()
    del t
    freed = mallinfo()
    return (held.hblkhd - before.hblkhd) / MIB, (freed.fordblks - before.fordblks) / MIB


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_large_blocks_come_from_the_heap_and_stay_there_for_reuse():
    mallinfo = _mallinfo()
    mmapped, _ = _held_and_freed(mallinfo)
    assert mmapped >= 90  # glibc's default: a large block is a fresh mmap, unmapped on free
    with freed_memory_reused() as applied:
        assert applied
        mmapped, kept = _held_and_freed(mallinfo)
        assert mmapped < 1 and kept >= 90  # from the heap, and kept there when freed


def test_switching_off_reports_whether_it_applied():
    assert reuse_freed_memory(False) == sys.platform.startswith("linux")
