"""
The README's "Train on your own data" commands, as written, on a COCO-format dataset that a user
would have: plain JSON + JPEGs in a folder of their own (written from the synthetic generator,
with class names of their own), registered under no name of ours. The commands run from a
working directory whose train_net.py / tools / projects / configs are those of this checkout
(so their default output/ goes to a temporary folder); only tiny-model overrides are added.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from lite_detr.data import generate_shapes_dataset

from .conftest import ROOT, TINY_MODEL

CLASSES = ["ring", "box", "wedge", "starfish"]  # not the generator's names: read from the json
TRAIN_OVERRIDES = TINY_MODEL + ["dataloader.input_size=128", "train.max_iter=3"]


def readme_commands():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    block = text.split("<!-- CUSTOM-DATA-COMMANDS")[1].split("<!-- /CUSTOM-DATA-COMMANDS -->")[0]
    code = block.split("```bash\n")[1].split("```")[0].replace("\\\n", " ")
    return [shlex.split(line) for line in code.splitlines() if line.strip() and line[0] != "#"]


def write_user_dataset(workdir):
    """``my_data/{train,val}.json`` + ``my_data/{train,val}/*.jpg``, as the README lays out."""
    gen = os.path.join(workdir, "generated")
    generate_shapes_dataset(gen, num_train=6, num_val=3, image_size=128, seed=3)
    for split in ("train", "val"):
        with open(os.path.join(gen, "annotations", f"instances_{split}.json")) as f:
            data = json.load(f)
        for img in data["images"]:
            img["file_name"] = os.path.basename(img["file_name"])
        for cat in data["categories"]:
            cat["name"] = CLASSES[cat["id"] - 1]
        os.makedirs(os.path.join(workdir, "my_data"), exist_ok=True)
        with open(os.path.join(workdir, "my_data", f"{split}.json"), "w") as f:
            json.dump(data, f)
        shutil.copytree(os.path.join(gen, split), os.path.join(workdir, "my_data", split))
    shutil.rmtree(gen)


def run(cmd, workdir):
    assert cmd[0] == "python"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, *cmd[1:]], cwd=workdir, env=env, capture_output=True, text=True
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    return out


def test_readme_custom_data_commands(tmp_path):
    for name in ("train_net.py", "tools", "projects", "configs"):
        os.symlink(os.path.join(ROOT, name), tmp_path / name)
    write_user_dataset(str(tmp_path))
    visualize, train, evaluate, demo = readme_commands()
    assert train[1] == "train_net.py" and "--eval-only" in evaluate

    out = run(visualize, tmp_path)
    drawn = sorted(os.listdir(tmp_path / "output/my_data_gt"))
    assert len(drawn) == 6 and all(p.endswith(".png") for p in drawn), out[-2000:]

    out = run(train + TRAIN_OVERRIDES, tmp_path)
    assert "FutureWarning" not in out and "DeprecationWarning" not in out
    run_dir = tmp_path / "output/lite_dino_r18_custom_cpu"
    assert (run_dir / "model_final.pth").is_file()
    log = (run_dir / "log.txt").read_text()
    assert "\x1b[" not in log  # no colour codes in the log file
    assert "Model:\nDINO(" not in log  # the whole model is not printed
    assert re.search(r"iter: 0 ", log), "the first progress line comes after iteration 0"
    assert "Evaluation results for bbox" in log
    assert "CPU run: freed memory is kept for reuse" in log
    for line in (run_dir / "metrics.json").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"metrics.json holds {c}"))
    saved = (run_dir / "config.yaml").read_text()
    assert "num_classes: 4" in saved and "my_data/val.json" in saved

    out = run(evaluate, tmp_path)
    assert "OrderedDict" not in out
    assert re.search(r"bbox:\n\|\s+AP\s+\|\s+AP50", out), out[-2000:]

    out = run(demo, tmp_path)
    with open(tmp_path / "output/my_data_demo/results.json") as f:
        results = json.load(f)
    assert len(results) == 3
    empty = [r for r in results if not r["instances"]]
    # a young model: each picture without boxes says so, with its best score
    hints = re.findall(r"no detection scored >= 0.3 \(best score: 0\.\d+\)", out)
    assert len(hints) == len(empty) > 0
    # every box is labelled with a class name of the json (threshold 0: all top boxes)
    run(demo + ["--confidence-threshold", "0", "--output", "output/all"], tmp_path)
    with open(tmp_path / "output/all/results.json") as f:
        found = {inst["category"] for r in json.load(f) for inst in r["instances"]}
    assert found and found <= set(CLASSES)
