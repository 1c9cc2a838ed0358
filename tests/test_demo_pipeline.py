"""A few-dozen-iteration version of ``make demo`` (tools/run_demo.py), on a tiny dataset."""

import json
import os
import subprocess
import sys

from PIL import Image
from pycocotools.coco import COCO

from .conftest import ROOT, TINY_MODEL

TINY = TINY_MODEL + [
    "dataloader.train.total_batch_size=2",
    "train.log_period=1",
    "train.eval_period=15",
    "train.checkpointer.period=15",
]


def _run_demo(tmp_path, max_iter):
    cmd = [
        sys.executable,
        os.path.join(ROOT, "tools", "run_demo.py"),
        "--max-iter",
        str(max_iter),
        "--num-train",
        "16",
        "--num-val",
        "4",
        "--image-size",
        "128",
        "--datasets-root",
        str(tmp_path / "datasets"),
        "--output-dir",
        str(tmp_path / "demo"),
        "--num-vis",
        "2",
    ] + TINY
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout


def test_short_demo_pipeline(tmp_path):
    out = _run_demo(tmp_path, 30)
    # data generated and valid
    data = tmp_path / "datasets" / "shapes_16_4_128"
    assert (data / "MANIFEST.json").is_file()
    coco = COCO(str(data / "annotations" / "instances_val.json"))
    assert len(coco.getImgIds()) == 4 and len(coco.getAnnIds()) >= 12
    # training ran and the loss fell
    demo = tmp_path / "demo"
    with open(demo / "metrics.json") as f:
        metrics = [json.loads(line) for line in f if line.strip()]
    losses = [m["total_loss"] for m in metrics if "total_loss" in m]
    assert len(losses) >= 28
    # metrics.json holds 20-iteration medians: compare the ends of the curve (how far they fall
    # in 30 iterations depends on the data stream drawn from train.seed: about 10%)
    assert sum(losses[-5:]) / 5 < 0.95 * sum(losses[:5]) / 5, losses
    # evaluation produced AP numbers (at iterations 15 and 30), printed as a table
    aps = [m["bbox/AP"] for m in metrics if "bbox/AP" in m]
    assert len(aps) == 2
    with open(demo / "inference" / "eval_results.json") as f:
        bbox = json.load(f)["bbox"]
    assert {"AP", "AP50", "AP75", "APs", "APm", "APl"} <= set(bbox)
    assert "AP50" in out and "APs" in out and "curves.png" in out
    # pictures
    vis = sorted(os.listdir(demo / "vis"))
    assert len(vis) == 2 and all(v.endswith(".png") for v in vis)
    with Image.open(demo / "vis" / vis[0]) as im:
        assert im.size == (2 * 128 + 4, 128)  # ground truth | predictions
    assert (demo / "curves.png").is_file()
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(demo))

    # a second run reuses the data and the trained model (no retraining)
    mtime = os.path.getmtime(demo / "model_final.pth")
    out2 = _run_demo(tmp_path, 30)
    assert "reusing it" in out2
    assert os.path.getmtime(demo / "model_final.pth") == mtime

    # as if killed while saving model_final.pth (the checkpoint period ends on the last
    # iteration, so model_0000029.pth is complete and last_checkpoint names it): the next demo
    # writes the final model from that checkpoint, evaluates again and logs that once
    os.remove(demo / "model_final.pth")
    (demo / "last_checkpoint").write_text("model_0000029.pth")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], stdout=-1)
    (demo / f".model_final.pth.tmp-{int(dead.stdout)}").write_bytes(b"")
    out3 = _run_demo(tmp_path, 30)
    assert f"writing it from {demo}/model_0000029.pth" in out3
    assert (demo / "model_final.pth").is_file()
    assert not [n for n in os.listdir(demo) if ".tmp-" in n]
    with open(demo / "metrics.json") as f:
        again = [json.loads(line) for line in f if line.strip()]
    assert [m["iteration"] for m in again] == [m["iteration"] for m in metrics]
    assert [m["bbox/AP"] for m in again if "bbox/AP" in m] == aps
