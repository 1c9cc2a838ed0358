import json
import subprocess
import sys

import pytest

from lite_detr.utils.malloc import reuse_freed_memory

# run in a fresh interpreter: the test session's heap holds whatever earlier tests freed, and
# glibc serves a large block from free heap memory before it considers mmap
CHECK = r"""
import ctypes, ctypes.util, json
import torch
from lite_detr.utils.malloc import freed_memory_reused

class MallInfo2(ctypes.Structure):
    NAMES = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
    _fields_ = [(n, ctypes.c_size_t) for n in NAMES.split()]

libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
if not hasattr(libc, "mallinfo2"):  # glibc < 2.33
    print(json.dumps(None)); raise SystemExit
libc.mallinfo2.restype = MallInfo2
MIB = 2**20

def held_and_freed(mib=96):
    # (MiB mmapped while a tensor of mib MiB is held, MiB of free heap kept after it is freed)
    before = libc.mallinfo2()
    t = torch.empty(mib * MIB // 4)
    held = libc.mallinfo2()
    del t
    freed = libc.mallinfo2()
    return (held.hblkhd - before.hblkhd) / MIB, (freed.fordblks - before.fordblks) / MIB

out = {"default": held_and_freed()}
with freed_memory_reused() as applied:
    out["applied"] = applied
    out["reused"] = held_and_freed()
print(json.dumps(out))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_large_blocks_come_from_the_heap_and_stay_there_for_reuse():
    proc = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if out is None:
        pytest.skip("needs glibc's mallinfo2")
    mmapped, kept = out["default"]
    # glibc's default: a large block is a fresh mmap, unmapped (not kept) when freed
    assert mmapped >= 90 and kept < 1
    assert out["applied"]
    mmapped, kept = out["reused"]
    assert mmapped < 1 and kept >= 90  # from the heap, and kept there for the next block


def test_switching_off_reports_whether_it_applied():
    assert reuse_freed_memory(False) == sys.platform.startswith("linux")
