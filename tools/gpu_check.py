#!/usr/bin/env python
"""
One-command check of the CUDA path (``make gpu-check``), run whenever a GPU is at hand.

Steps, each in its own process with a time limit, so that one failure does not hide the others:

1. build    ``lite_detr._C`` with the CUDA kernels for this GPU (``setup.py build_ext --inplace``)
2. tests    the op tests (``tests/ops``): CUDA vs CPU kernels and references in f64/f32/f16/bf16,
            gradcheck, determinism, device guard, 64-bit indexing, input checks; and that neither
            the attention nor a training step reads GPU data back on the host (but the matching)
3. ops      ``benchmarks/bench_ops.py --device cuda``: compiled kernels vs the PyTorch references
4. train    50 AMP (fp16) training iterations of Lite-DINO R50 on 800-px synthetic shapes images,
            batch 2: time per iteration and peak memory
5. latency  inference latency split (backbone / encoder / decoder) of DINO vs Lite-DINO R50 at
            800x1333 (``benchmarks/bench_model.py --device cuda``)

It writes one markdown report (``--output``) and prints it. Without a CUDA GPU it says so and exits
0 having done nothing else. Exit status: 1 if any step failed, else 0.

    python tools/gpu_check.py --output output/gpu_check.md
    python tools/gpu_check.py --steps tests ops          # a subset (the build is then skipped)
"""

import argparse
import importlib.util
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = ("build", "tests", "ops", "train", "latency")
# seconds per step: the whole check stays within 8 minutes on a recent GPU machine
LIMITS = {"build": 200, "tests": 100, "ops": 45, "train": 75, "latency": 45}
TRAIN_CONFIG = "projects/lite_dino/configs/lite_dino_r50_4scale_h3l1_a2b3_12ep.py"
# beside tests/ops: no host synchronisation in the attention, nor in a whole training step
NO_SYNC_TESTS = (
    "tests/layers/test_deformable_attention.py::test_cuda_forward_does_not_synchronise",
    "tests/modeling/meta_arch/test_host_syncs.py",
)


LOG_DIR = None  # set by main(): each step's whole output goes to gpu_check_<step>.log there


def run(cmd, limit, env=None, log=None):
    """(return code or None on timeout, seconds, combined output) of a command run in ROOT; the
    output is also written to ``gpu_check_<log>.log`` beside the report."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=limit,
        )
        code, out = proc.returncode, proc.stdout
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout or ""
        code, out = None, out + f"\n[gpu_check] stopped after the step's limit of {limit} s"
    if log and LOG_DIR:
        with open(os.path.join(LOG_DIR, f"gpu_check_{log}.log"), "w") as f:
            f.write(" ".join(cmd) + "\n\n" + out)
    return code, time.perf_counter() - start, out


def tail(text, lines=25):
    return "\n".join(text.rstrip().splitlines()[-lines:])


def fenced(text):
    return "```\n" + text.rstrip() + "\n```\n"


def gpu_summary():
    import torch

    props = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
    driver = subprocess.run(
        ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
        capture_output=True,
        text=True,
    ).stdout.split("\n")[0]
    rows = [
        f"- GPU {i}: {p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability "
        f"{p.major}.{p.minor}, {p.multi_processor_count} SMs"
        for i, p in enumerate(props)
    ]
    rows.append(
        f"- torch {torch.__version__} (CUDA {torch.version.cuda}), driver {driver or '?'}, "
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
    )
    return props[0], "\n".join(rows)


def step_build(props):
    env = {
        "FORCE_CUDA": "1",
        "TORCH_CUDA_ARCH_LIST": os.environ.get(
            "TORCH_CUDA_ARCH_LIST", f"{props.major}.{props.minor}"
        ),
        "MAX_JOBS": os.environ.get("MAX_JOBS", str(os.cpu_count() or 2)),
    }
    code, secs, out = run(
        [sys.executable, "setup.py", "build_ext", "--inplace"], LIMITS["build"], env, "build"
    )
    if code == 0:
        probe = "from lite_detr.ops import compiled_ops_available as a; print(a('cuda'))"
        code, _, check = run([sys.executable, "-c", probe], 60)
        if code == 0 and check.strip().endswith("False"):
            code, out = 1, out + "\n[gpu_check] lite_detr._C was built without CUDA kernels"
    summary = f"built for sm_{props.major}{props.minor} in {secs:.0f} s"
    return code, secs, summary, ("" if code == 0 else fenced(tail(out, 40)))


def step_tests(props):
    with tempfile.TemporaryDirectory() as tmp:
        xml = os.path.join(tmp, "junit.xml")
        cmd = [sys.executable, "-m", "pytest", "tests/ops", *NO_SYNC_TESTS]
        cmd += ["-v", "-p", "no:cacheprovider"]
        if importlib.util.find_spec("xdist"):  # 4 workers: faster, and a crash ends one worker
            cmd += ["-n", "4"]
        code, secs, out = run(cmd + ["-rfEs", f"--junitxml={xml}"], LIMITS["tests"], log="tests")
        counts, cuda_cases = {}, 0
        if os.path.exists(xml):
            suite = ET.parse(xml).getroot()
            suite = suite if suite.tag == "testsuite" else suite[0]
            counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
            cuda_cases = sum("cuda" in case.get("name", "") for case in suite.iter("testcase"))
    summary = (
        ", ".join(f"{v} {k}" for k, v in counts.items())
        + f" ({cuda_cases} CUDA test cases) in {secs:.0f} s"
        if counts
        else f"no result in {secs:.0f} s"
    )
    failed = [line for line in out.splitlines() if line.startswith(("FAILED", "ERROR", "SKIPPED"))]
    lines = out.splitlines()
    crashed = [
        "\n".join(lines[i : i + 25]) for i, line in enumerate(lines) if "Fatal Python" in line
    ][:1]
    crashed += [line for line in lines if "node down" in line or "crashed" in line][:10]
    last = [
        line for line in out.splitlines() if "::" in line and ("PASSED" in line or "FAILED" in line)
    ]
    detail = "\n".join(
        failed[:40]
        + crashed
        + (["last test reported: " + last[-1]] if last and code and not counts else [])
    )
    detail = fenced(detail + "\n" + tail(out, 3)) if failed or code else ""
    return code, secs, summary, detail


def step_ops(props):
    cmd = [sys.executable, "benchmarks/bench_ops.py", "--device", "cuda", "--reps", "20"]
    code, secs, out = run(cmd, LIMITS["ops"], log="ops")
    return code, secs, f"{secs:.0f} s", fenced(tail(out, 12))


def step_train(props):
    cmd = [sys.executable, os.path.abspath(__file__), "--train-benchmark"]
    code, secs, out = run(cmd, LIMITS["train"], log="train")
    result = re.findall(r"^TRAIN (.*)$", out, flags=re.M)
    summary = result[-1] if result and code == 0 else f"failed after {secs:.0f} s"
    return code, secs, summary, "" if code == 0 else fenced(tail(out, 30))


def step_latency(props):
    cmd = [
        sys.executable,
        "benchmarks/bench_model.py",
        "--device",
        "cuda",
        "--variants",
        "dino",
        "h3l1_a2b3",
        "--no-flops",
        "--runs",
        "10",
        "--warmup",
        "3",
    ]
    code, secs, out = run(cmd, LIMITS["latency"], log="latency")
    table = [line for line in out.splitlines() if line.startswith("|")]
    detail = fenced("\n".join(table)) if code == 0 and table else fenced(tail(out, 30))
    return code, secs, f"{secs:.0f} s", detail


def train_benchmark(
    iters: int = 50, warmup: int = 10, batch: int = 2, size: int = 800, device: str = "cuda"
) -> str:
    """AMP (float16) training iterations of Lite-DINO R50 on synthetic shapes images; returns one
    line. ``device="cpu"`` runs the same code in float32 (CPU autocast is slow without native
    bfloat16), for the tests."""
    import numpy as np
    import torch
    from detectron2.config import LazyConfig, instantiate
    from detectron2.structures import Boxes, Instances
    from detectron2.utils.events import EventStorage

    from lite_detr.data.datasets.shapes import _make_image  # one synthetic image and its boxes
    from lite_detr.engine.train_loop import LiteDetrTrainer

    cuda = device == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    torch.manual_seed(0)
    cfg = LazyConfig.load(os.path.join(ROOT, TRAIN_CONFIG))
    model = instantiate(cfg.model).to(device).train()
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)

    rng = np.random.default_rng(0)
    samples = []
    for _ in range(4 * batch):
        image, anns = _make_image(rng, size)
        inst = Instances((size, size))
        inst.gt_boxes = Boxes(torch.tensor(np.array([b for _, b in anns]), dtype=torch.float32))
        inst.gt_classes = torch.tensor([c for c, _ in anns], dtype=torch.int64)
        chw = torch.from_numpy(
            np.ascontiguousarray(np.asarray(image)[:, :, ::-1].transpose(2, 0, 1))
        )
        samples.append({"image": chw, "height": size, "width": size, "instances": inst})

    def batches():
        while True:
            for i in range(0, len(samples), batch):
                yield samples[i : i + batch]

    trainer = LiteDetrTrainer(
        model,
        batches(),
        optimizer,
        amp_enabled=cuda,
        amp_dtype="float16",
        clip_grad_params={"max_norm": 0.1, "norm_type": 2},
        device_type=device,
    )
    times, losses = [], []
    with EventStorage(0) as storage:
        trainer.storage = storage
        for it in range(iters):
            trainer.iter = it
            sync()
            start = time.perf_counter()
            trainer.run_step()
            sync()
            times.append(time.perf_counter() - start)
            losses.append(storage.history("total_loss").latest())
            storage.step()
    timed = times[warmup:]
    peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if cuda else "-"
    return (
        f"{statistics.median(timed) * 1e3:.0f} ms/iter (median of iterations {warmup + 1}-"
        f"{iters}, min {min(timed) * 1e3:.0f}), {batch} images of {size}x{size} per iteration, "
        f"peak memory {peak}, total loss {losses[0]:.2f} -> {losses[-1]:.2f}, all finite: "
        f"{all(np.isfinite(v) for v in losses)}"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--output", default=os.path.join(ROOT, "output", "gpu_check.md"))
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS))
    parser.add_argument("--train-benchmark", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.train_benchmark:
        print("TRAIN " + train_benchmark())
        return 0

    import torch

    if not torch.cuda.is_available():
        print(
            "gpu-check: no CUDA GPU on this machine (torch.cuda.is_available() is False); "
            "nothing to check."
        )
        return 0

    global LOG_DIR
    LOG_DIR = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(LOG_DIR, exist_ok=True)
    props, env = gpu_summary()
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:  # no git
        commit = ""
    report = [
        f"# GPU check: {props.name}\n",
        f"`make gpu-check`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit "
        f"{commit or '?'}\n",
        env + "\n",
        "| step | result | summary |",
        "|---|---|---|",
    ]
    details, failed = [], []
    functions = {
        "build": step_build,
        "tests": step_tests,
        "ops": step_ops,
        "train": step_train,
        "latency": step_latency,
    }
    for name in args.steps:
        print(f"[gpu_check] {name} ...", flush=True)
        code, secs, summary, detail = functions[name](props)
        status = "ok" if code == 0 else ("timeout" if code is None else f"FAILED ({code})")
        if code != 0:
            failed.append(name)
        print(f"[gpu_check] {name}: {status}, {summary}", flush=True)
        report.append(f"| {name} | {status} | {summary} |")
        if detail:
            details.append(f"\n## {name}\n\n{detail}")
        if name == "build" and code != 0:
            print("[gpu_check] the build failed: the other steps need it, stopping.")
            break
    text = "\n".join(report) + "\n" + "".join(details)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    tmp = args.output + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, args.output)
    print("\n" + text)
    print(f"[gpu_check] report written to {args.output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
