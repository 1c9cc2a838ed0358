#!/usr/bin/env python
"""Compiled vs pure-PyTorch deformable attention ops: time and peak extra memory, side by side.

Sizes of issue 3: the 4-scale encoder of an 800x1333 image (levels (100,167), (50,84), (25,42),
(13,21); M=8, D=32, P=4) with queries = all tokens and queries = the 25% high-level tokens (Lite
DETR's high-only layers), and the decoder (Lq=900, N=2). Sampling points lie around each query's
reference point (a few pixels away on every level, as a trained model samples) unless
``--random-locations`` spreads them uniformly over the maps (the worst case for caches).

Peak extra memory (CPU): the peak resident set size during the call minus the resident size just
before it, read from /proc/self/status (VmHWM, reset through /proc/self/clear_refs). It is measured
in a child process run with MALLOC_MMAP_THRESHOLD_ set, so that glibc returns every large buffer
to the OS on free; the number then covers every allocation of the call (tensors, kernel buffers),
including the output. Times are taken in this process, with freed memory kept for reuse
(``lite_detr.utils.malloc.reuse_freed_memory``, as train_net.py does for CPU training): the 45 MB
gradients of value are then not page-faulted in afresh in every call.
On CUDA the memory is torch.cuda.max_memory_allocated() minus the allocated memory before.

    python benchmarks/bench_ops.py                 # 2 threads, CPU, all sizes
    python benchmarks/bench_ops.py --device cuda   # on a GPU
"""

import argparse
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import time

import torch

from lite_detr.ops import (
    compiled_ops_available,
    cpu_kernels,
    ms_deform_attn,
    ms_deform_attn_key_aware,
)
from lite_detr.ops.reference import ms_deform_attn_key_aware_reference, ms_deform_attn_reference
from lite_detr.utils.malloc import reuse_freed_memory

LEVELS = ((100, 167), (50, 84), (25, 42), (13, 21))
M, D, P = 8, 32, 4


def level_tensors(device):
    shapes = torch.tensor(LEVELS, device=device)
    areas = shapes.prod(1)
    starts = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    return shapes, starts, int(areas.sum())


def token_centres(levels):
    """(sum H*W, 2) normalised (x, y) centres of the tokens of ``levels``."""
    centres = []
    for h, w in levels:
        y, x = torch.meshgrid(
            (torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij"
        )
        centres.append(torch.stack([x, y], -1).reshape(-1, 2))
    return torch.cat(centres)


def make_case(name, device, random_locations, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes, starts, S = level_tensors("cpu")
    if name == "encoder, all tokens":
        N, refs = 1, token_centres(LEVELS)
    elif name == "encoder, 25% high-level":
        N, refs = 1, token_centres(LEVELS[1:])
    else:  # decoder: 900 queries around random box centres
        N, refs = 2, torch.rand(900, 2, generator=gen) * 0.9 + 0.05
    Lq, L = refs.shape[0], len(LEVELS)
    wh = shapes.flip(1).float()  # (L, 2) as (W, H)
    if random_locations:
        locations = torch.rand(N, Lq, M, L, P, 2, generator=gen)
    else:  # a few pixels around the reference point on every level
        offsets = torch.randn(N, Lq, M, L, P, 2, generator=gen) * 2.0
        locations = refs[None, :, None, None, None, :] + offsets / wh[None, None, None, :, None, :]
    value = torch.randn(N, S, M, D, generator=gen)
    query = torch.randn(N, Lq, M, D, generator=gen)
    weights = torch.randn(N, Lq, M, L * P, generator=gen).softmax(-1).view(N, Lq, M, L, P)
    tensors = [t.to(device) for t in (query, value, locations, weights)]
    return tensors + [shapes.to(device), starts.to(device)]


def rss_kib():
    status = open("/proc/self/status").read()
    return {k: int(re.search(k + r":\s+(\d+)", status).group(1)) for k in ("VmRSS", "VmHWM")}


def peak_extra_mib(fn, device):
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    before = rss_kib()["VmRSS"]
    fn()
    return (rss_kib()["VmHWM"] - before) / 1024


def time_ms(fn, device, reps):
    fn()  # warm-up
    times = []
    for _ in range(reps):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), min(times)


def calls(op, impl, case):
    """forward() and forward_backward() closures for one op implementation."""
    query, value, locations, weights, shapes, starts = case
    if op == "standard":
        fn = ms_deform_attn if impl == "compiled" else ms_deform_attn_reference
        inputs = (value, locations, weights)

        def run(v, loc, w, q=None):
            return fn(v, shapes, starts, loc, w)

    else:
        fn = ms_deform_attn_key_aware if impl == "compiled" else ms_deform_attn_key_aware_reference
        inputs = (value, locations, query)

        def run(v, loc, w=None, q=None):
            return fn(q, v, shapes, starts, loc)

    grad_out = None

    def forward():
        with torch.no_grad():
            out = run(value, locations, weights, query)
        del out

    def forward_backward():
        nonlocal grad_out
        leaves = [t.detach().requires_grad_() for t in inputs]
        if op == "standard":
            out = run(*leaves)
        else:
            out = run(leaves[0], leaves[1], q=leaves[2])
        if grad_out is None or grad_out.shape != out.shape:
            grad_out = torch.ones_like(out)
        grads = torch.autograd.grad(out, leaves, grad_out)
        del out, grads, leaves

    return forward, forward_backward


def measure_memory(args, cases):
    """{case: {op: {impl: (forward MiB, forward+backward MiB)}}}, from a child process."""
    if args.device == "cuda" or args.memory_only:
        return {
            name: {
                op: {
                    impl: [
                        peak_extra_mib(f, args.device)
                        for f in calls(
                            op, impl, make_case(name, args.device, args.random_locations)
                        )
                    ]
                    for impl in ("compiled", "reference")
                }
                for op in ("standard", "key-aware")
            }
            for name in cases
        }
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--memory-only",
        "--threads",
        str(args.threads),
    ]
    cmd += ["--cases"] + cases + (["--random-locations"] if args.random_locations else [])
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description="compiled vs reference deformable attention ops")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions (median shown)")
    parser.add_argument("--random-locations", action="store_true")
    parser.add_argument("--cases", nargs="*", default=None, help="substrings of case names")
    parser.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not compiled_ops_available(args.device):
        sys.exit(f"bench_ops: lite_detr._C has no {args.device} kernels; build it first")
    cases = ["encoder, all tokens", "encoder, 25% high-level", "decoder"]
    if args.cases:
        cases = [c for c in cases if any(s in c for s in args.cases)]
    if args.memory_only:
        print(json.dumps(measure_memory(args, cases)))
        return
    if args.device == "cpu":
        reuse_freed_memory()  # the timings only; the memory child returns freed blocks to the OS
    print(
        f"torch {torch.__version__}, {args.device}"
        f"{f' ({cpu_kernels()} kernels)' if args.device == 'cpu' else ''}, "
        f"{torch.get_num_threads()} threads, "
        f"M={M} D={D} P={P} levels={LEVELS}, "
        f"{'uniformly random' if args.random_locations else 'local'} sampling points; "
        f"times: median of {args.reps} in ms; memory: peak extra MiB"
    )
    memory = measure_memory(args, cases)
    header = (
        f"{'case':<24} {'op':<10} | {'fwd comp':>9} {'fwd ref':>9} {'x':>6} | "
        f"{'f+b comp':>9} {'f+b ref':>9} {'x':>6} | {'mem comp':>9} {'mem ref':>9} {'%':>6} | "
        f"{'f+b mem c':>9} {'f+b mem r':>9} {'%':>6}"
    )
    print(header)
    print("-" * len(header))
    for name in cases:
        case = make_case(name, args.device, args.random_locations)
        Lq = case[0].shape[1]
        for op in ("standard", "key-aware"):
            t = {}
            for impl in ("compiled", "reference"):
                forward, forward_backward = calls(op, impl, case)
                t[impl] = (
                    time_ms(forward, args.device, args.reps)[0],
                    time_ms(forward_backward, args.device, args.reps)[0],
                )
            (cf, cb), (rf, rb) = t["compiled"], t["reference"]
            (cmf, cmb), (rmf, rmb) = memory[name][op]["compiled"], memory[name][op]["reference"]
            print(
                f"{name + f' (Lq={Lq})':<24.24} {op:<10} | {cf:9.2f} {rf:9.2f} {rf / cf:6.1f} | "
                f"{cb:9.2f} {rb:9.2f} {rb / cb:6.1f} | {cmf:9.1f} {rmf:9.1f} "
                f"{100 * cmf / rmf:6.1f} | {cmb:9.1f} {rmb:9.1f} {100 * cmb / rmb:6.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
