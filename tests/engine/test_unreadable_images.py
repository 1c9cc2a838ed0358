"""An image deleted during training (after the dataset check): train_net.py stops with one line
and intact checkpoints, or with ``train.skip_bad_images=True`` skips it and counts; one process
and two CPU processes (gloo)."""

import os
import subprocess
import sys

import torch

from ..conftest import ROOT, write_toy_config
from .test_distributed import needs_gloo

DELETING_MAPPER = "dataloader.train.mapper._target_=tests.engine.conftest.ImageDeletingMapper"


def _train_net(folder, *args):
    """train_net.py on a fresh toy dataset in ``folder``, whose output goes to ``folder/out``."""
    os.makedirs(folder)
    config, out = write_toy_config(folder), os.path.join(folder, "out")
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file", config, *args]
        + [f"train.output_dir={out}", DELETING_MAPPER],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _assert_one_line_stop(res, out, status):
    assert res.returncode == status, res.stderr[-3000:]
    assert "Traceback" not in res.stdout + res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("train_net.py: error: ") and "Cannot read image '" in last, last
    assert "during training (FileNotFoundError" in last and "train.skip_bad_images=True" in last
    # the checkpoints written before are intact: --resume would continue from the newest
    last = (out / "last_checkpoint").read_text()
    assert last in {"model_0000002.pth", "model_0000005.pth", "model_0000008.pth"}, last
    assert torch.load(out / last, weights_only=False)["iteration"] == int(last[6:13])
    assert not (out / "model_final.pth").exists()


def test_image_deleted_during_training_stops_with_one_line_or_is_skipped(tmp_path):
    res = _train_net(tmp_path / "stop")
    _assert_one_line_stop(res, tmp_path / "stop" / "out", status=2)

    # skipped every time it is read, and counted
    res = _train_net(tmp_path / "skip", "train.skip_bad_images=True")
    assert res.returncode == 0, res.stderr[-3000:]
    skipped = [line for line in res.stderr.splitlines() if "Skipped unreadable image" in line]
    assert skipped and "FileNotFoundError" in skipped[0]
    assert [int(s.split("; ")[-1].split()[0]) for s in skipped] == list(range(1, len(skipped) + 1))
    assert (tmp_path / "skip" / "out" / "model_final.pth").is_file()


@needs_gloo
def test_image_deleted_during_training_with_two_processes_stops_with_one_line(tmp_path):
    res = _train_net(tmp_path / "ddp", "--num-gpus", "2", "--dist-url", "auto")
    _assert_one_line_stop(res, tmp_path / "ddp" / "out", status=1)
    assert "rank " in res.stderr.strip().splitlines()[-1]
