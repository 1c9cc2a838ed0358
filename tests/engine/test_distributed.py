"""Distributed training on the CPU (gloo) through detectron2's launch: DDP equals one process,
evaluation gathers every rank's images, a failing rank stops the job with its message, and
train_net.py runs with 2 processes and as 2 "machines" on localhost (train, evaluate, resume)."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest
import torch

from lite_detr.engine import launch as launch_module
from lite_detr.engine.launch import DistributedLaunchError, check_launch

from ..conftest import ROOT, SHAPES_CFG, TINY

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ddp_worker.py")
needs_gloo = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="needs torch.distributed with gloo",
)


def run_worker(*args, cwd, timeout=240):
    return subprocess.run(
        [sys.executable, WORKER, *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@needs_gloo
def test_two_processes_step_like_one_process_on_the_same_images(tmp_path):
    """2 ranks x 2 images and 1 rank x 4 images: the same weights after one optimizer step
    (gradients averaged by DDP, the loss normalised by the all-reduced box count)."""
    for world_size in (1, 2):
        res = run_worker("step", world_size, tmp_path / f"ws{world_size}.pth", cwd=tmp_path)
        assert res.returncode == 0, res.stderr[-3000:]
    one = torch.load(tmp_path / "ws1.pth")
    two = torch.load(tmp_path / "ws2.pth")
    moved = max((one["after"][k] - one["before"][k]).abs().max() for k in one["after"])
    assert moved > 1e-4  # the step did change the weights
    for k, v in one["after"].items():
        torch.testing.assert_close(two["after"][k], v, rtol=0, atol=1e-5, msg=k)


@needs_gloo
def test_evaluation_with_two_ranks_gives_the_ap_of_one(tmp_path):
    for world_size in (1, 2):
        res = run_worker("eval", world_size, tmp_path / f"ws{world_size}.json", cwd=tmp_path)
        assert res.returncode == 0, res.stderr[-3000:]
    one = json.loads((tmp_path / "ws1.json").read_text())
    two = json.loads((tmp_path / "ws2.json").read_text())
    assert 5 < one["AP"] < 95  # a real mix of hits and misses
    assert two == pytest.approx(one, nan_ok=True)


@needs_gloo
def test_an_exception_in_one_rank_stops_every_rank_with_its_message(tmp_path):
    start = time.monotonic()
    res = run_worker("fail", 2, cwd=tmp_path, timeout=120)
    assert time.monotonic() - start < 100  # rank 0 waits in a barrier: it must be stopped
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]
    assert last == "error: rank 1 failed: ValueError: rank 1 cannot read its shard"


def test_impossible_launches_give_one_clear_message(monkeypatch):
    if not torch.cuda.is_available():
        with pytest.raises(DistributedLaunchError, match="finds no CUDA GPU.*train.device=cpu"):
            check_launch("cuda", 2)
    with pytest.raises(DistributedLaunchError, match="must be >= 1"):
        check_launch("cpu", 0)
    check_launch("cpu", 1)  # one process needs nothing more
    monkeypatch.setattr(torch.distributed, "is_gloo_available", lambda: False)
    with pytest.raises(DistributedLaunchError, match="needs PyTorch's gloo backend"):
        check_launch("cpu", 2)
    monkeypatch.undo()
    monkeypatch.setattr(launch_module, "_launch_supports_cpu", lambda: False)
    with pytest.raises(DistributedLaunchError, match="install_detectron2.sh"):
        check_launch("cpu", 1, num_machines=2)


def test_train_net_reports_an_impossible_launch_in_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    res = subprocess.run(
        [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file", SHAPES_CFG]
        + ["--num-gpus", "2", "train.device=cuda", f"train.output_dir={tmp_path}/out"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 1, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert (
        res.stderr.strip()
        .splitlines()[-1]
        .startswith("train_net.py: error: train.device is 'cuda' but PyTorch finds no CUDA GPU")
    )
    assert not os.path.exists(tmp_path / "out")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_gloo
def test_train_net_with_two_processes_and_as_two_machines(tmp_path):
    """--num-gpus 2 train.device=cpu trains, checkpoints on rank 0 only and evaluates; then the
    two-machine form (--num-machines 2 --machine-rank R --dist-url tcp://...) resumes it."""
    config = tmp_path / "ddp_shapes.py"
    config.write_text(
        "from detectron2.config import LazyConfig\n"
        "from detectron2.data import DatasetCatalog\n"
        "from lite_detr.data import register_shapes\n"
        "if 'ddp_tn_train' not in DatasetCatalog.list():\n"
        f"    register_shapes('ddp_tn', root={str(tmp_path)!r}, num_train=8, num_val=4,"
        " image_size=128)\n"
        f"_cfg = LazyConfig.load({SHAPES_CFG!r})\n"
        "model, dataloader, optimizer = _cfg.model, _cfg.dataloader, _cfg.optimizer\n"
        "lr_multiplier, train = _cfg.lr_multiplier, _cfg.train\n"
        "dataloader.train.dataset.names = 'ddp_tn_train'\n"
        "dataloader.test.dataset.names = 'ddp_tn_val'\n"
    )
    out = tmp_path / "out"
    common = [os.path.join(ROOT, "train_net.py"), "--config-file", str(config)]
    overrides = TINY + [
        "train.device=cpu",
        f"train.output_dir={out}",
        "train.checkpointer.period=2",
        "train.eval_period=100",
        "train.log_period=1",
    ]

    def train_net(*args, **kwargs):
        return subprocess.Popen(
            [sys.executable, *common, *args, *overrides, *kwargs.get("extra", [])],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    # a free port ("auto"): detectron2's default port is fixed per user, and another job of the
    # same user (a second test run) may hold it
    proc = train_net("--num-gpus", "2", "--dist-url", "auto", extra=["train.max_iter=2"])
    log, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, log[-4000:]
    assert sorted(p for p in os.listdir(out) if p.endswith(".pth")) == [
        "model_0000001.pth",
        "model_final.pth",
    ]
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"
    assert "bbox/AP" in log or "Evaluation results for bbox" in log
    first = [json.loads(line)["iteration"] for line in open(out / "metrics.json")]
    assert {0, 1} <= set(first) and len(first) == len(set(first))  # one writer: each once

    url = f"tcp://127.0.0.1:{_free_port()}"
    machines = [
        train_net(
            "--num-gpus", "1", "--num-machines", "2", "--machine-rank", str(rank),
            "--dist-url", url, "--resume", extra=["train.max_iter=4"],
        )  # fmt: skip
        for rank in (0, 1)
    ]
    logs = [p.communicate(timeout=400)[0] for p in machines]
    for p, log in zip(machines, logs):
        assert p.returncode == 0, log[-4000:]
    assert f"Loading from {out}/model_final.pth" in logs[0]
    # continued, not restarted; each iteration logged once (the first run's evaluation, logged
    # at its max_iter 2, gives way to step 2), the evaluation at the new max_iter
    metrics = [json.loads(line) for line in open(out / "metrics.json")]
    assert [m["iteration"] for m in metrics] == [0, 1, 2, 3, 4]
    assert "total_loss" in metrics[2] and "bbox/AP" in metrics[4]
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"
