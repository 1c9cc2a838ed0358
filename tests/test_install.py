"""The install pipeline: compiled op present and CPU-only, detectron2 usable on CPU."""

import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_compiled_op_registered():
    import lite_detr._C  # noqa: F401  (loads the registrations)

    for name in ("ms_deform_attn", "ms_deform_attn_key_aware"):
        assert hasattr(torch.ops.lite_detr, name), f"lite_detr::{name} is not registered"
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"lite_detr::{name}", "CPU")


@pytest.mark.skipif(
    os.environ.get("FORCE_CUDA") == "1" or torch.cuda.is_available(), reason="CUDA build"
)
def test_cpu_build_has_no_cuda_dependency():
    import lite_detr._C

    with open(lite_detr._C.__file__, "rb") as f:
        blob = f.read()
    # a CPU-only build links neither the CUDA runtime nor torch's CUDA library
    assert b"libcudart" not in blob and b"libc10_cuda" not in blob


def test_detectron2_resnet_forward_cpu():
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone import BasicStem, ResNet

    # depth < 50 uses BasicBlock, which takes no stride_in_1x1
    stages = ResNet.make_default_stages(depth=18, norm="FrozenBN")
    model = ResNet(
        BasicStem(in_channels=3, out_channels=64, norm="FrozenBN"),
        stages,
        out_features=["res3", "res4", "res5"],
    ).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96))
    shapes = {k: tuple(v.shape) for k, v in out.items()}
    assert shapes == {"res3": (1, 128, 8, 12), "res4": (1, 256, 4, 6), "res5": (1, 512, 2, 3)}
    assert model.output_shape()["res5"] == ShapeSpec(channels=512, stride=32)


def test_install_script_leaves_existing_detectron2_alone():
    out = subprocess.run(
        ["bash", os.path.join(ROOT, "tools", "install_detectron2.sh"), sys.executable],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "already importable" in out.stdout and "leaving it alone" in out.stdout


def test_gpu_check_without_a_gpu_says_so_and_does_nothing(tmp_path):
    """`make gpu-check` / tools/gpu_check.py on a machine without CUDA: one line, exit 0, no
    build and no report."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    report = tmp_path / "report.md"
    res = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "gpu_check.py"), "--output", str(report)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().startswith("gpu-check: no CUDA GPU on this machine")
    assert not report.exists()


def test_gpu_check_training_step_runs_on_cpu():
    """The `train` step of gpu_check (Lite-DINO R50, AMP, synthetic images), shrunk, on the CPU."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "gpu_check", os.path.join(ROOT, "tools", "gpu_check.py")
    )
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    line = gpu_check.train_benchmark(iters=1, warmup=0, batch=1, size=256, device="cpu")
    assert "1 images of 256x256" in line and line.endswith("all finite: True")


def test_python_floor_is_stated_alike_and_holds():
    """setup.py, the Makefile and the linters state one floor, and every source parses at it. The
    floor is 3.10 and no lower: annotations such as ``str | None`` are evaluated at import."""
    import ast
    import re

    def read(name):
        with open(os.path.join(ROOT, name)) as f:
            return f.read()

    (floor,) = re.findall(r'python_requires=">=3\.(\d+)"', read("setup.py"))
    minor = int(floor)
    assert set(re.findall(r"version_info >= \(3, (\d+)\)", read("Makefile"))) == {floor}
    assert set(re.findall(r"Python >= 3\.(\d+)", read("Makefile"))) == {floor}
    assert set(re.findall(r'target-version = \[?"py3(\d+)"', read("pyproject.toml"))) == {floor}
    files = subprocess.run(
        ["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    pep604 = False
    for path in files:
        tree = ast.parse(read(path), filename=path, feature_version=(3, minor))
        for node in ast.walk(tree):
            if isinstance(node, ast.arg | ast.AnnAssign) and node.annotation is not None:
                pep604 |= isinstance(node.annotation, ast.BinOp)
    assert pep604 and minor == 10, "the floor is the oldest Python the sources run on"


def test_normal_install_carries_the_configs(tmp_path):
    """`pip install .` (not editable) into a fresh venv: `lite_detr.model_zoo.get_config` finds
    the configs inside the installed package (the source tree is out of reach) and a model
    builds and runs. The venv sees this environment's packages through a .pth file, so nothing
    is downloaded; the op is left out (LITE_DETR_WITH_OP=0) to keep the build short."""
    import shutil
    import sysconfig
    import venv

    source = tmp_path / "src"  # a copy: pip builds in the source tree (build/, *.egg-info)
    anywhere = shutil.ignore_patterns("__pycache__", "*.egg-info", ".*_cache", "*.so")

    def ignore(folder, names):
        at_root = {".git", ".venv", "build", "dist", "output", "datasets"}
        return anywhere(folder, names) | (at_root & set(names) if folder == ROOT else set())

    shutil.copytree(ROOT, source, ignore=ignore)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = str(env_dir / "bin" / "python")
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    with open(os.path.join(site, "this_env.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    env = {**os.environ, "LITE_DETR_WITH_OP": "0", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)
    pip = [python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    # --ignore-installed: never touch the lite_detr this environment has
    res = subprocess.run(
        pip + ["--ignore-installed", str(source)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    shutil.rmtree(source)  # only the installed package is left

    check = """
import os, sys, warnings, torch
from detectron2.config import instantiate
import lite_detr
from lite_detr.model_zoo import get_config, get_config_file
site = sys.argv[1]
assert lite_detr.__file__.startswith(site), lite_detr.__file__
for name in ("projects/lite_dino/configs/lite_dino_r18_shapes_cpu.py",
             "projects/lite_h_detr/configs/lite_h_detr_r50_h3l1_a2b3_12ep.py"):
    assert get_config_file(name).startswith(os.path.join(site, "lite_detr", "model_zoo")), name
cfg = get_config("projects/lite_h_detr/configs/lite_h_detr_r50_h3l1_a2b3_12ep.py")
assert cfg.train.epochs == 12 and cfg.model.encoder.num_high_levels == 3
cfg = get_config("projects/lite_dino/configs/lite_dino_r18_shapes_cpu.py")
model = instantiate(cfg.model).eval()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # no compiled op: the PyTorch reference runs, with a warning
    with torch.no_grad():
        out = model([{"image": torch.randint(0, 255, (3, 64, 80), dtype=torch.uint8)}])
print(type(model).__name__, len(out[0]["instances"]))
"""
    res = subprocess.run(
        [python, "-c", check, site], capture_output=True, text=True, env=env, cwd=tmp_path,
        timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split() == ["DINO", "100"]
