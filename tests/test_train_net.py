"""train_net.py end to end, and the compatibility of our ``train`` keys with detectron2's own
``tools/lazyconfig_train_net.py`` (not in the pip package: its ``do_train`` runs inline here)."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import instantiate
from detectron2.engine import SimpleTrainer, default_writers, hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset

from lite_detr.data import register_shapes
from lite_detr.engine import load_config

from .conftest import ROOT, SHAPES_CFG, TINY


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    register_shapes("tn_shapes", root=str(root), num_train=8, num_val=4, image_size=128)
    return [
        "dataloader.train.dataset.names=tn_shapes_train",
        "dataloader.test.dataset.names=tn_shapes_val",
    ]


def test_lazyconfig_train_net_do_train_runs_our_config(tiny_data, tmp_path):
    """detectron2's lazyconfig_train_net.do_train + do_test, line for line, on our config."""
    cfg = load_config(
        SHAPES_CFG, TINY + tiny_data + [f"train.output_dir={tmp_path}", "train.max_iter=2"]
    )
    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)
    model = create_ddp_model(model, **cfg.train.ddp)
    assert not cfg.train.amp.enabled  # AMPTrainer asserts CUDA in detectron2 0.6
    trainer = SimpleTrainer(model, train_loader, optim)
    checkpointer = DetectionCheckpointer(
        model, cfg.train.output_dir, optimizer=optim, trainer=trainer
    )

    def do_test():
        return inference_on_dataset(
            model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
        )

    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer),
            hooks.EvalHook(cfg.train.eval_period, do_test),
            hooks.PeriodicWriter(
                default_writers(cfg.train.output_dir, cfg.train.max_iter),
                period=cfg.train.log_period,
            ),
        ]
    )
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=False)
    trainer.train(0, cfg.train.max_iter)
    assert os.path.isfile(os.path.join(tmp_path, "model_final.pth"))
    assert "bbox/AP" in trainer.storage.latest()
    # and its --eval-only path
    model = create_ddp_model(instantiate(cfg.model).to(cfg.train.device))
    DetectionCheckpointer(model).load(os.path.join(tmp_path, "model_final.pth"))
    assert "AP" in do_test()["bbox"]


def _train_net(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "train_net.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_bad_input_gives_one_clear_message_and_keeps_output(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text("precious\n")
    (out / "config.yaml").write_text("precious\n")
    cases = [
        (["--config-file", "nope/config.py"], "nope/config.py' does not exist"),
        (
            ["--config-file", SHAPES_CFG, "train.max_iters=1"],
            "Unknown config key 'train.max_iters'",
        ),
        (
            ["--config-file", SHAPES_CFG, "dataloader.train.dataset.names=coco_2042_train"],
            "not registered",
        ),
        (
            ["--config-file", SHAPES_CFG, "--eval-only", f"train.init_checkpoint={tmp_path}/x.pth"],
            "x.pth' does not exist",
        ),
        (["--config-file", SHAPES_CFG, "train.max_iter=abc"], "train.max_iter must be an integer"),
    ]
    for argv, message in cases:
        res = _train_net(*argv, f"train.output_dir={out}")
        assert res.returncode == 2, res.stderr[-2000:]
        last = res.stderr.strip().splitlines()[-1]
        assert last.startswith("train_net.py: error:") and message in last, last
        assert "Traceback" not in res.stderr
    assert (out / "metrics.json").read_text() == "precious\n"
    assert (out / "config.yaml").read_text() == "precious\n"
    assert sorted(os.listdir(out)) == ["config.yaml", "metrics.json"]


def test_datasets_folder_without_a_lock_file_is_one_line_not_a_hang(tmp_path):
    # issue 25, item 6: /proc exists but the generation's lock file cannot be created there;
    # train_net.py hung in the lock. A short timeout: the answer comes before anything runs
    out = tmp_path / "out"
    res = subprocess.run(
        [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file", SHAPES_CFG]
        + [f"train.output_dir={out}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, "DETECTRON2_DATASETS": "/proc"},
    )
    assert res.returncode == 2, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("train_net.py: error:") and "$DETECTRON2_DATASETS='/proc'" in last
    assert "Traceback" not in res.stderr and not out.exists()


def test_checkpoint_of_other_encoder_variant_is_refused(tiny_data, tmp_path):
    from lite_detr.engine import ConfigError, do_eval_only

    h2l2 = load_config(SHAPES_CFG, TINY + tiny_data + ["model.encoder.num_high_levels=2"])
    ckpt = tmp_path / "h2l2.pth"
    torch.save({"model": instantiate(h2l2.model).state_dict()}, ckpt)
    cfg = load_config(SHAPES_CFG, TINY + tiny_data + [f"train.init_checkpoint={ckpt}"])
    with pytest.raises(ConfigError, match="h2l2.pth"):
        do_eval_only(cfg)


def _wait_for(proc, path, timeout=240):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def _start(*args):
    return subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "train_net.py"), *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_killed_and_interrupted_run_resumes_to_the_uninterrupted_result(toy_config_file, tmp_path):
    """kill -9, then SIGINT, then --resume: bitwise the weights of the uninterrupted run (CPU);
    a fresh run into the finished folder is refused and changes nothing."""
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    res = _train_net("--config-file", toy_config_file, f"train.output_dir={a}")
    assert res.returncode == 0, res.stderr[-3000:]

    proc = _start("--config-file", toy_config_file, f"train.output_dir={b}")
    _wait_for(proc, os.path.join(b, "model_0000002.pth"))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc = _start("--config-file", toy_config_file, "--resume", f"train.output_dir={b}")
    _wait_for(proc, os.path.join(b, "model_0000008.pth"))
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("train_net.py: interrupted;")
    res = _train_net("--config-file", toy_config_file, "--resume", f"train.output_dir={b}")
    assert res.returncode == 0, res.stderr[-3000:]

    want = torch.load(os.path.join(a, "model_final.pth"), weights_only=False)
    got = torch.load(os.path.join(b, "model_final.pth"), weights_only=False)
    assert got["iteration"] == want["iteration"] == 11
    for k, v in want["model"].items():
        assert torch.equal(v, got["model"][k]), k
    for k, s in want["optimizer"]["state"].items():
        assert torch.equal(s["exp_avg_sq"], got["optimizer"]["state"][k]["exp_avg_sq"]), k

    before = {n: os.stat(os.path.join(a, n)).st_mtime_ns for n in os.listdir(a)}
    res = _train_net("--config-file", toy_config_file, f"train.output_dir={a}")
    assert res.returncode == 2
    assert "already holds a run" in res.stderr and "--resume" in res.stderr
    assert {n: os.stat(os.path.join(a, n)).st_mtime_ns for n in os.listdir(a)} == before
