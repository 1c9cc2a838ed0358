#!/usr/bin/env python
"""CPU latency of one detector run three ways: PyTorch eager, ``torch.compile`` (inductor) and the
exported ONNX file in ONNX Runtime; Lite-DINO R50 H3L1-(2+1)x3 at 800x1333 on 2 threads by default.

All three run the same tensor-only inference path (``lite_detr.export.InferenceDetector``: image
in, boxes/scores/labels out) with the same random weights; the cost does not depend on them. The
ONNX file is exported at a smaller size (``--export-size``) and timed at ``--size``, which also
exercises its dynamic input size. The runtimes take turns in every round, so that a busy shared
machine slows all of them alike; the table gives the median over ``--runs`` rounds after one
warm-up run, and each runtime's ratio to eager. Detections of the compiled model and of ONNX
Runtime are compared with eager's at ``--size`` (``lite_detr.export.compare_with_pytorch``:
strictly, or, where a near-tie of the query selection flipped, with eager's decoding of that
runtime's own selection; the compiled model returns its selection, ONNX Runtime's is read from
the file).

    python benchmarks/bench_export.py                    # ~15-25 min on 2 cores (compile: most)
    python benchmarks/bench_export.py --runs 3 --no-compile
"""

import argparse
import os
import statistics
import tempfile
import time

import torch
from detectron2.config import instantiate

from lite_detr.config import load_config
from lite_detr.export import (
    ExportError,
    InferenceDetector,
    compare_with_pytorch,
    describe_comparison,
    export_onnx,
    read_selection,
    selection_session,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DEFAULT_CONFIG = os.path.join(
    ROOT, "projects", "lite_dino", "configs", "lite_dino_r50_4scale_h3l1_a2b3_36ep.py"
)


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--config-file", default=DEFAULT_CONFIG)
    parser.add_argument("--size", nargs=2, type=int, default=[800, 1333], metavar=("H", "W"))
    parser.add_argument("--export-size", nargs=2, type=int, default=[512, 640], metavar=("H", "W"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides key=value")
    args = parser.parse_args(argv)

    import onnxruntime as ort

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = instantiate(load_config(args.config_file, args.opts).model).to("cpu").eval()
    # with the query selection as extra outputs (already computed: no cost) for the comparison
    eager = InferenceDetector(model, return_selection=True).eval()
    h, w = args.size
    image = torch.rand(3, h, w, generator=torch.Generator().manual_seed(0)) * 255

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        _, secs = _timed(lambda: export_onnx(model, path, *args.export_size, threads=args.threads))
        print(f"ONNX export + check at {args.export_size[0]}x{args.export_size[1]}: {secs:.0f} s")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        ort_selection = selection_session(path, model.num_queries, opts)
    feeds = {"image": image.numpy()}
    runners = {
        "PyTorch eager": lambda: eager(image),
        "ONNX Runtime": lambda: session.run(None, feeds),
    }
    if not args.no_compile:
        compiled = torch.compile(eager)
        with torch.no_grad():
            _, secs = _timed(lambda: compiled(image))
        print(f"torch.compile (inductor) first run at {h}x{w}: {secs:.0f} s")
        runners["torch.compile"] = lambda: compiled(image)

    times = {name: [] for name in runners}
    outputs = {}
    with torch.no_grad():
        for name, fn in runners.items():  # warm-up
            outputs[name] = fn()
        for _ in range(args.runs):
            for name, fn in runners.items():
                times[name].append(_timed(fn)[1])
    base = statistics.median(times["PyTorch eager"])
    print(
        f"\n{type(model).__name__} ({os.path.basename(args.config_file)}), {h}x{w}, "
        f"{args.threads} threads, median of {args.runs} rounds\n"
    )
    print("| runtime | latency (ms) | x eager |")
    print("|---|---|---|")
    for name, t in times.items():
        med = statistics.median(t)
        print(f"| {name} | {med * 1000:.0f} | {med / base:.2f} |")
    print()
    selections = {
        "ONNX Runtime": lambda: read_selection(ort_selection, image, outputs["ONNX Runtime"]),
        "torch.compile": lambda: outputs["torch.compile"][3:],
    }
    for name in runners:
        if name == "PyTorch eager":
            continue
        try:
            diff = compare_with_pytorch(
                model, image, outputs[name][:3], name, selection=selections[name]
            )
            print(f"{name} vs eager: {describe_comparison(diff, model.num_queries, name)}")
        except ExportError as e:
            print(f"{name} vs eager: {e}")


if __name__ == "__main__":
    main()
