"""Real ``kill -9`` of train_net.py while it saves ``model_final.pth``, right after a checkpoint
and mid-iteration, then ``--resume``: the final model, ``metrics.json`` and the TensorBoard
scalars equal those of an uninterrupted run (toy detector, CPU, 12 iterations)."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from ..conftest import ROOT, write_toy_config

KILLED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "killed_train_net.py")
WALL_CLOCK = {"time", "data_time", "eta_seconds"}  # differ between any two runs


def _train_net(config, out, *args, kill=None):
    script = [KILLED, kill] if kill else [os.path.join(ROOT, "train_net.py")]
    return subprocess.run(
        [sys.executable, *script, "--config-file", config, *args, f"train.output_dir={out}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The toy config file and the output folder of its uninterrupted run."""
    folder = tmp_path_factory.mktemp("kill_resume")
    config = write_toy_config(folder)
    out = folder / "uninterrupted"
    res = _train_net(config, out)
    assert res.returncode == 0, res.stderr[-3000:]
    return config, out


def _metrics(out):
    with open(out / "metrics.json") as f:
        return [{k: v for k, v in json.loads(line).items() if k not in WALL_CLOCK} for line in f]


def _tensorboard(out):
    """{tag: [(step, value)]} as TensorBoard shows them (earlier files' events purged)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out))
    events.Reload()
    return {
        tag: [(e.step, None if math.isnan(e.value) else e.value) for e in events.Scalars(tag)]
        for tag in events.Tags()["scalars"]
        if tag not in WALL_CLOCK
    }


def _assert_same_final_model(want_dir, got_dir):
    want = torch.load(want_dir / "model_final.pth", weights_only=False)
    got = torch.load(got_dir / "model_final.pth", weights_only=False)
    assert got["iteration"] == want["iteration"] == 11
    for k, v in want["model"].items():
        assert torch.equal(v, got["model"][k]), k


def _temporaries(out):
    return [n for n in os.listdir(out) if ".tmp-" in n]


def test_killed_while_saving_the_final_model_resume_writes_it(uninterrupted, tmp_path):
    config, want = uninterrupted
    out = tmp_path / "out"
    res = _train_net(config, out, kill="save:model_final")
    assert res.returncode == -9, res.stderr[-3000:]
    # the periodic checkpoint of the last iteration is complete, model_final.pth is not
    assert not (out / "model_final.pth").exists()
    assert (out / "last_checkpoint").read_text() == "model_0000011.pth"
    assert [n.split(".tmp-")[0] for n in _temporaries(out)] == [".model_final.pth"]

    res = _train_net(config, out, "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    log = res.stdout + res.stderr
    assert f"{out}/model_final.pth is missing" in log
    assert f"writing it from {out}/model_0000011.pth, the checkpoint of that iteration" in log
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    assert _temporaries(out) == []
    _assert_same_final_model(want, out)
    assert _metrics(out) == _metrics(want)


def test_logs_after_kills_and_resumes_equal_the_uninterrupted_run(uninterrupted, tmp_path):
    config, want = uninterrupted
    out = tmp_path / "out"
    # in iteration 1, before the first checkpoint (the resume starts over at iteration 0), then
    # right after the checkpoint of iteration 5 is saved
    for point in ("step:1", "saved:model_0000005"):
        res = _train_net(config, out, "--resume", kill=point)
        assert res.returncode == -9, res.stderr[-3000:]
    for _ in range(2):  # the second one resumes a finished run: evaluates again, logs it once
        res = _train_net(config, out, "--resume")
        assert res.returncode == 0, res.stderr[-3000:]
    _assert_same_final_model(want, out)
    metrics = _metrics(out)
    assert [m["iteration"] for m in metrics] == list(range(13))  # 12 steps, the evaluation
    assert "bbox/AP" in metrics[-1] and "total_loss" in metrics[-2]
    assert metrics == _metrics(want)  # the smoothed losses too
    assert _tensorboard(out) == _tensorboard(want)
