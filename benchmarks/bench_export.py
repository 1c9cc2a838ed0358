#!/usr/bin/env python
"""CPU latency of one detector run four ways: PyTorch eager fp32, eager bf16, ``torch.compile``
(inductor) and the exported ONNX file in ONNX Runtime; Lite-DINO R50 H3L1-(2+1)x3 at 640x640 and
800x1333 on 2 threads by default.

All run the same tensor-only inference path (``lite_detr.export.InferenceDetector``: image in,
boxes/scores/labels out) with the same random weights; the cost does not depend on them. The ONNX
file is exported at a smaller size (``--export-size``) and timed at each ``--size``, which also
exercises its dynamic input size; ONNX Runtime runs its optimised graph
(``lite_detr.export.write_optimized_onnx``, next to the export) at graph optimisation level "all".
Eager bf16 is ``lite_detr.precision.bf16_inference`` (skipped, with one line, on a CPU without
bfloat16 instructions). The runtimes take turns in every round, so that a busy shared machine slows
all of them alike; the table gives the median over ``--runs`` rounds after one warm-up run, and
each runtime's ratio to eager fp32, with the load average before and after. Detections of the
compiled model and of ONNX Runtime are compared with eager's at each size
(``lite_detr.export.compare_with_pytorch``: strictly, or, where a near-tie of the query selection
flipped, with eager's decoding of that runtime's own selection; the compiled model returns its
selection, ONNX Runtime's is read from the file); bf16's, which are not meant to be equal to the
last bit, by how many of eager fp32's detections it reproduces with the same label, a box IoU of
at least 0.9 and a score within 0.05 (one-to-one), and its largest score difference over those.

``--rtdetr`` adds RT-DETR R50 (the R50-vd configuration of Hugging Face ``transformers``'
``RTDetrForObjectDetection``, random weights; needs ``pip install transformers``) to the rounds,
eager fp32, as the yardstick of a detector that practitioners deploy on CPUs; its own fastest
path (its ONNX export) is not timed here.

    python benchmarks/bench_export.py                    # ~30-40 min on 2 cores (compile: most)
    python benchmarks/bench_export.py --runs 3 --no-compile --size 640 640
"""

import argparse
import functools
import os
import platform
import statistics
import tempfile
import time

import lite_detr  # noqa: F401  (first: quiets fvcore's import warning, see lite_detr/__init__.py)

# isort: split
import torch
from detectron2.config import instantiate
from detectron2.structures import Boxes, pairwise_iou

from lite_detr.config import load_config
from lite_detr.export import (
    ExportError,
    InferenceDetector,
    compare_with_pytorch,
    describe_comparison,
    export_onnx,
    onnx_session,
    read_selection,
    selection_session,
    write_optimized_onnx,
)
from lite_detr.precision import BF16_CPU_FLAGS, bf16_inference, cpu_bf16_support, cpu_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DEFAULT_CONFIG = os.path.join(
    ROOT, "projects", "lite_dino", "configs", "lite_dino_r50_4scale_h3l1_a2b3_36ep.py"
)


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def cpu_description() -> str:
    """The CPU's model name and its bfloat16 / AVX-512 / AMX flags (from /proc/cpuinfo)."""
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    flags = sorted(f for f in cpu_flags() if f.startswith(("avx512", "amx")) or f == "avx2")
    return f"{model}, {os.cpu_count()} cores; flags: {' '.join(flags) or 'none read'}"


def bf16_agreement(expected, actual, iou: float = 0.9, score: float = 0.05) -> str:
    """How many of ``expected``'s detections (boxes, scores, labels) ``actual`` reproduces:
    same label, box IoU >= ``iou``, score within ``score``, each paired once (greedy, by
    descending score)."""
    boxes, scores, labels = (torch.as_tensor(t) for t in expected)
    o_boxes, o_scores, o_labels = (torch.as_tensor(t) for t in actual)
    ious = pairwise_iou(Boxes(boxes.float()), Boxes(o_boxes.float()))
    ok = (labels[:, None] == o_labels[None].to(labels.dtype)) & (ious >= iou)
    ok &= (scores[:, None] - o_scores[None]).abs() <= score
    free = torch.ones(len(o_scores), dtype=torch.bool)
    matched, worst = 0, 0.0
    for i in scores.argsort(descending=True).tolist():
        candidates = (ok[i] & free).nonzero().flatten()
        if len(candidates):
            j = candidates[(o_scores[candidates] - scores[i]).abs().argmin()]
            free[j] = False
            matched += 1
            worst = max(worst, float((o_scores[j] - scores[i]).abs()))
    top = min(100, len(scores))
    same_top = int((labels[:top] == o_labels[:top].to(labels.dtype)).sum())
    return (
        f"{matched}/{len(scores)} detections reproduced (same label, IoU >= {iou}, score within "
        f"{score}; max score diff {worst:.3f}); top-{top} labels equal in order: {same_top}/{top}"
    )


def time_size(h, w, model, runtimes, ort_selection, args):
    """Time ``runtimes`` (name -> function of the image, "PyTorch eager fp32" first) on one
    random h x w image, taking turns; print the table and each one's agreement with eager."""
    image = torch.rand(3, h, w, generator=torch.Generator().manual_seed(0)) * 255
    runners = {name: functools.partial(fn, image) for name, fn in runtimes.items()}
    if "torch.compile fp32" in runners:
        with torch.no_grad():
            _, secs = _timed(runners["torch.compile fp32"])
        print(f"torch.compile (inductor) first run at {h}x{w}: {secs:.0f} s")

    times = {name: [] for name in runners}
    outputs = {}
    load_before = os.getloadavg()[0]
    with torch.no_grad():
        for name, fn in runners.items():  # warm-up
            outputs[name] = fn()
        for _ in range(args.runs):
            for name, fn in runners.items():
                times[name].append(_timed(fn)[1])
    load_after = os.getloadavg()[0]
    base = statistics.median(times["PyTorch eager fp32"])
    print(
        f"\n{type(model).__name__} ({os.path.basename(args.config_file)}), {h}x{w}, "
        f"{args.threads} threads, median of {args.runs} rounds; load average "
        f"{load_before:.2f} before, {load_after:.2f} after\n"
    )
    print("| runtime | latency (ms) | min (ms) | x eager fp32 |")
    print("|---|---|---|---|")
    for name, t in times.items():
        med = statistics.median(t)
        print(f"| {name} | {med * 1000:.0f} | {min(t) * 1000:.0f} | {med / base:.2f} |")
    print()
    selections = {
        "ONNX Runtime fp32": lambda: read_selection(
            ort_selection, image, outputs["ONNX Runtime fp32"]
        ),
        "torch.compile fp32": lambda: outputs["torch.compile fp32"][3:],
    }
    for name in runners:
        if name == "PyTorch eager fp32" or name.startswith("RT-DETR"):
            continue
        if name == "PyTorch eager bf16":
            agreement = bf16_agreement(outputs["PyTorch eager fp32"][:3], outputs[name][:3])
            print(f"{name} vs eager fp32: {agreement}")
            continue
        try:
            diff = compare_with_pytorch(
                model, image, outputs[name][:3], name, selection=selections[name]
            )
            print(f"{name} vs eager: {describe_comparison(diff, model.num_queries, name)}")
        except ExportError as e:
            print(f"{name} vs eager: {e}")


def rtdetr_r50():
    """RT-DETR R50 of Hugging Face ``transformers`` (random weights) as a function of one
    (3, H, W) 0-255 image, zero-padded at the bottom and right to multiples of 32 (its feature
    pyramid needs them: 800x1333 runs as 800x1344)."""
    from transformers import RTDetrConfig, RTDetrForObjectDetection

    torch.manual_seed(0)
    model = RTDetrForObjectDetection(RTDetrConfig()).eval()  # the default: ResNet-50-vd

    def run(image):
        h, w = image.shape[-2:]
        image = torch.nn.functional.pad(image / 255.0, (0, -w % 32, 0, -h % 32))
        return model(pixel_values=image[None]).logits

    return run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--config-file", default=DEFAULT_CONFIG)
    parser.add_argument(
        "--size", nargs=2, type=int, action="append", metavar=("H", "W"), help="repeatable"
    )
    parser.add_argument("--export-size", nargs=2, type=int, default=[512, 640], metavar=("H", "W"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--onnx", metavar="FILE", help="an exported file (default: export one)")
    parser.add_argument("--rtdetr", action="store_true", help="also RT-DETR R50 (transformers)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides key=value")
    args = parser.parse_args(argv)
    sizes = args.size or [[640, 640], [800, 1333]]

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = instantiate(load_config(args.config_file, args.opts).model).to("cpu").eval()
    # with the query selection as extra outputs (already computed: no cost) for the comparison
    eager = InferenceDetector(model, return_selection=True).eval()
    print(cpu_description())
    bf16 = cpu_bf16_support() is not None
    if not bf16:
        print(f"no bfloat16 instructions ({' or '.join(BF16_CPU_FLAGS)}): no eager bf16 row")

    with tempfile.TemporaryDirectory() as tmp:
        path = args.onnx
        if path is None:
            path = os.path.join(tmp, "model.onnx")
            _, secs = _timed(
                lambda: export_onnx(model, path, *args.export_size, threads=args.threads)
            )
            eh, ew = args.export_size
            print(f"ONNX export + check at {eh}x{ew}: {secs:.0f} s")
        optimized = write_optimized_onnx(path, os.path.join(tmp, "model.optimized.onnx"))
        session = onnx_session(optimized, threads=args.threads, level="all")
        # the timed graph with its selection as extra outputs, for the comparison
        ort_selection = selection_session(
            optimized, model.num_queries, session.get_session_options()
        )
    compiled = torch.compile(eager) if not args.no_compile else None

    def eager_bf16(image):
        with bf16_inference(model):
            return eager(image)

    runtimes = {"PyTorch eager fp32": eager}
    if bf16:
        runtimes["PyTorch eager bf16"] = eager_bf16
    runtimes["ONNX Runtime fp32"] = lambda image: session.run(None, {"image": image.numpy()})
    if compiled is not None:
        runtimes["torch.compile fp32"] = compiled
    if args.rtdetr:
        runtimes["RT-DETR R50 eager fp32 (transformers)"] = rtdetr_r50()
    for h, w in sizes:
        time_size(h, w, model, runtimes, ort_selection, args)


if __name__ == "__main__":
    main()
