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
``RTDetrForObjectDetection``, random weights; needs ``pip install transformers``), the yardstick
of a detector that practitioners deploy on CPUs, to the rounds: eager fp32, eager bf16
(``torch.autocast``) and ONNX Runtime of its ``torch.onnx.export`` at each size (a fixed-size
export, as RT-DETR is deployed; a failed export leaves one line instead of the row); the script
ends with the fastest path of each detector and their ratio. Then, unless ``--ap-weights ''``,
bf16's COCO AP against fp32's on the demo's val set (``bench_precision.py``; the demo's model from
``make demo``, else one line saying so).

    python benchmarks/bench_export.py --rtdetr           # the issue-29 table: ~12 min idle, 2 cores
    python benchmarks/bench_export.py --runs 3 --no-compile --size 640 640 --ap-weights ''
"""

import argparse
import functools
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import lite_detr  # noqa: F401  (first: quiets fvcore's import warning, see lite_detr/__init__.py)

# isort: split
import torch
from detectron2.config import instantiate

from lite_detr.config import load_config
from lite_detr.deploy import optimize_for_cpu_inference
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
from lite_detr.precision import (
    BF16_CPU_FLAGS,
    bf16_inference,
    cpu_bf16_support,
    cpu_flags,
    match_detections,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_WEIGHTS = os.path.join("output", "demo", "model_final.pth")  # what `make demo` writes

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
    """How many of ``expected``'s detections (boxes, scores, labels) ``actual`` reproduces
    (``lite_detr.precision.match_detections``: same label, box IoU >= ``iou``, score within
    ``score``, one-to-one), and how many of the top 100 labels are equal in order."""
    matched, worst = match_detections(expected, actual, iou, score)
    labels, o_labels = torch.as_tensor(expected[2]), torch.as_tensor(actual[2])
    top = min(100, len(labels))
    same_top = int((labels[:top] == o_labels[:top].to(labels.dtype)).sum())
    return (
        f"{int(matched.sum())}/{len(matched)} detections reproduced (same label, IoU >= {iou}, "
        f"score within {score}; max score diff {worst:.3f}); top-{top} labels equal in order: "
        f"{same_top}/{top}"
    )


def time_size(h, w, model, runtimes, ort_selection, args):
    """Time ``runtimes`` (name -> function of the image, "PyTorch eager fp32" first) on one
    random h x w image, taking turns; print the table and each one's agreement with eager;
    return the median latencies (name -> seconds)."""
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
        if name in ("PyTorch eager fp32", "RT-DETR R50 eager fp32"):
            continue
        if name.startswith("RT-DETR"):
            agreement = rtdetr_agreement(outputs["RT-DETR R50 eager fp32"], outputs[name])
            print(f"{name} vs its eager fp32: {agreement}")
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
    return {name: statistics.median(t) for name, t in times.items()}


class RTDETR:
    """RT-DETR R50 of Hugging Face ``transformers`` (the default ``RTDetrConfig``: ResNet-50-vd,
    random weights), run on one (3, H, W) 0-255 image zero-padded at the bottom and right to
    multiples of 32 (its feature pyramid needs them: 800x1333 runs as 800x1344): eager fp32,
    eager bf16 (``torch.autocast``) and ONNX Runtime fp32 of a ``torch.onnx.export`` per padded
    size (RT-DETR's deployment exports a fixed size), graph optimisation level "all"."""

    def __init__(self, threads: int, folder: str):
        from transformers import RTDetrConfig, RTDetrForObjectDetection

        torch.manual_seed(0)
        self.model = RTDetrForObjectDetection(RTDetrConfig()).eval()
        self.threads, self.folder = threads, folder

    @staticmethod
    def _padded(image):
        h, w = image.shape[-2:]
        return torch.nn.functional.pad(image / 255.0, (0, -w % 32, 0, -h % 32))[None]

    def eager(self, image):
        out = self.model(pixel_values=self._padded(image))
        return out.logits, out.pred_boxes

    def eager_bf16(self, image):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.eager(image)

    def onnx_runtime(self, h: int, w: int):
        """ONNX Runtime's run of the model exported at h x w (padded), or the one-line reason
        why the export or its first run failed."""
        image = torch.rand(3, h, w, generator=torch.Generator().manual_seed(0)) * 255
        path = os.path.join(self.folder, f"rtdetr_{h}x{w}.onnx")
        try:
            with torch.no_grad():
                _, secs = _timed(
                    lambda: torch.onnx.export(
                        _Outputs(self.model),
                        (self._padded(image),),
                        path,
                        dynamo=False,
                        opset_version=17,
                    )
                )
            session = onnx_session(path, threads=self.threads, level="all")
            name = session.get_inputs()[0].name

            def run(image):
                return session.run(None, {name: self._padded(image).numpy()})

            run(image)
        except Exception as e:  # the exporters and ONNX Runtime raise many types
            return f"{type(e).__name__}: {_first_line_of(e)}"
        print(f"RT-DETR R50 ONNX export at {h}x{w}: {secs:.0f} s")
        return run


class _Outputs(torch.nn.Module):
    """RT-DETR's class logits and boxes as a tuple (what its ONNX file outputs)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        out = self.model(pixel_values=pixel_values)
        return out.logits, out.pred_boxes


def _first_line_of(e: Exception) -> str:
    lines = [line for line in str(e).splitlines() if line.strip()]
    return lines[0][:200] if lines else ""


def rtdetr_agreement(expected, actual) -> str:
    """RT-DETR's runs compared by their sorted per-query best class scores (its detections,
    query for query, may come in another order where the random weights' proposal scores tie)."""
    best = [
        torch.as_tensor(logits).float().sigmoid().amax(-1).flatten().sort().values
        for logits in (expected[0], actual[0])
    ]
    top = min(100, len(best[0]))
    diff = float((best[0][-top:] - best[1][-top:]).abs().max())
    return f"top-{top} query scores (sorted) within {diff:.2g} of eager fp32's"


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
    parser.add_argument(
        "--ap-weights",
        default=DEMO_WEIGHTS,
        help=f"a trained model for bf16's AP vs fp32's (bench_precision.py; default {DEMO_WEIGHTS},"
        " written by `make demo`); '' skips it",
    )
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
    # eager and compiled run as in the tools; the ONNX file above is the plain model's, as
    # tools/export_model.py writes it
    optimize_for_cpu_inference(model)
    compiled = torch.compile(eager) if not args.no_compile else None
    tmp_rtdetr = tempfile.TemporaryDirectory()  # RT-DETR's ONNX files, removed at exit
    rtdetr = RTDETR(args.threads, tmp_rtdetr.name) if args.rtdetr else None
    medians = {}

    def eager_bf16(image):
        with bf16_inference(model):
            return eager(image)

    runtimes = {"PyTorch eager fp32": eager}
    if bf16:
        runtimes["PyTorch eager bf16"] = eager_bf16
    runtimes["ONNX Runtime fp32"] = lambda image: session.run(None, {"image": image.numpy()})
    if compiled is not None:
        runtimes["torch.compile fp32"] = compiled
    for h, w in sizes:
        runtimes_hw = dict(runtimes)
        if rtdetr is not None:
            runtimes_hw["RT-DETR R50 eager fp32"] = rtdetr.eager
            if bf16:
                runtimes_hw["RT-DETR R50 eager bf16"] = rtdetr.eager_bf16
            ort_run = rtdetr.onnx_runtime(h, w)
            if callable(ort_run):
                runtimes_hw["RT-DETR R50 ONNX Runtime fp32"] = ort_run
            else:
                print(
                    f"RT-DETR R50 ONNX Runtime fp32 at {h}x{w}: no row, export failed ({ort_run})"
                )
        medians[(h, w)] = time_size(h, w, model, runtimes_hw, ort_selection, args)
    if rtdetr is not None:
        print("\nFastest path of each detector (median latency; the ratio < 1: Lite-DINO faster)")
        for (h, w), times in medians.items():
            lite = min((t, n) for n, t in times.items() if not n.startswith("RT-DETR"))
            rt = min((t, n) for n, t in times.items() if n.startswith("RT-DETR"))
            print(
                f"{h}x{w}: Lite-DINO {lite[1]} {lite[0] * 1000:.0f} ms, RT-DETR {rt[1][12:]} "
                f"{rt[0] * 1000:.0f} ms: Lite-DINO / RT-DETR = {lite[0] / rt[0]:.2f}"
            )
    if args.ap_weights and not bf16:
        print("\nno bfloat16 instructions: no bf16 AP")
    elif args.ap_weights:
        print(f"\nbf16 vs fp32 AP ({os.path.basename(__file__)} --ap-weights):")
        # bench_precision.py does it (a script of its own: scripts share code through the library)
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_precision.py")
        subprocess.run([sys.executable, script, "--weights", args.ap_weights], check=False)


if __name__ == "__main__":
    main()
