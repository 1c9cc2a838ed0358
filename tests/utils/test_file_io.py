import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from lite_detr.utils import atomic_write, remove_stale_temporaries, temporary_path

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# saves checkpoints of a 9 MB model in a loop, as a training run does
_SAVER = """
import os, sys, torch
from lite_detr.checkpoint import LiteDetrCheckpointer
model = torch.nn.Linear(1500, 1500)
os.makedirs(sys.argv[1])
ckpt = LiteDetrCheckpointer(model, sys.argv[1])
for i in range(1000):
    with torch.no_grad():
        model.bias.fill_(i)
    ckpt.save(f"model_{i:07d}")
    print(i, flush=True)
"""


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_atomic_write_keeps_the_old_file_on_error(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(str(path)) as f:
            f.write("new, half written")
            raise KeyboardInterrupt
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["results.json"]
    with atomic_write(str(path)) as f:
        f.write("new")
    assert path.read_text() == "new"
    with pytest.raises(ValueError, match="whole files"):
        with atomic_write(str(path), "a"):
            pass


def test_kill_during_save_leaves_intact_checkpoints(tmp_path):
    """kill -9 at random moments of a save loop: every checkpoint on disk loads, and
    last_checkpoint names one; the killed process' temporary file is cleaned up later."""
    delays = (0.05, 0.12, 0.2)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _SAVER, str(tmp_path / str(i))],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(len(delays))
    ]
    for proc, delay in zip(procs, delays):
        proc.stdout.readline()  # the first checkpoint is complete
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    interrupted_saves = 0
    for i in range(len(delays)):
        folder = tmp_path / str(i)
        names = os.listdir(folder)
        with open(folder / "last_checkpoint") as f:
            last = f.read()
        assert last in names
        for name in names:
            if name.endswith(".pth"):
                state = torch.load(folder / name, weights_only=True)
                assert state["model"]["bias"][0] == int(name[6:13])
        removed = remove_stale_temporaries(str(folder))
        assert all(os.path.basename(n).startswith((".model_", ".last_checkpoint")) for n in removed)
        assert not [n for n in os.listdir(folder) if n.startswith(".")]
        interrupted_saves += len(removed)
    assert interrupted_saves > 0  # the kills did land inside saves


def test_remove_stale_temporaries_keeps_live_writers(tmp_path):
    dead = _dead_pid()
    (tmp_path / f".shapes.tmp-{dead}").mkdir()
    (tmp_path / f".shapes.tmp-{dead}" / "a.jpg").write_bytes(b"x")
    (tmp_path / f".model_final.pth.tmp-{dead}").write_bytes(b"x")
    live = os.path.basename(temporary_path(str(tmp_path / "model_0000001.pth")))
    (tmp_path / live).write_bytes(b"x")  # this process is writing it
    (tmp_path / "model_0000001.pth").write_bytes(b"x")
    removed = remove_stale_temporaries(str(tmp_path))
    assert len(removed) == 2
    assert sorted(os.listdir(tmp_path)) == sorted([live, "model_0000001.pth"])
