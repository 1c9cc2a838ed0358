"""Resume: exact continuation, verified checkpoints with fallback, retention on disk."""

import argparse
import json
import os

import pytest
import torch
from detectron2.engine import HookBase
from detectron2.utils.env import seed_all_rng

import lite_detr.engine.defaults as defaults
from lite_detr.engine import ConfigError, do_train


def _args(resume=False):
    return argparse.Namespace(resume=resume, eval_only=False)


class _Stop(Exception):
    pass


def _train_until(cfg, stop_after: int, resume=False):
    """do_train that raises after iteration ``stop_after`` (a crash between checkpoints)."""

    class Crash(HookBase):
        def after_step(self):
            if self.trainer.iter == stop_after:
                raise _Stop

    orig = defaults.LiteDetrTrainer.register_hooks

    def register_hooks(self, hooks):
        orig(self, list(hooks) + [Crash()])

    defaults.LiteDetrTrainer.register_hooks = register_hooks
    try:
        with pytest.raises(_Stop):
            do_train(_args(resume), cfg)
    finally:
        defaults.LiteDetrTrainer.register_hooks = orig


def _final(out):
    return torch.load(os.path.join(out, "model_final.pth"), weights_only=False)


def test_crash_and_resume_equals_uninterrupted_run(toy_cfg, tmp_path):
    toy_cfg.dataloader.train.num_workers = 1  # augmentation in a worker process
    toy_cfg.model.num_preds = 2
    toy_cfg.train.max_iter = 10
    toy_cfg.train.eval_period = 4  # evaluation in between must not move the RNGs
    toy_cfg.train.checkpointer = {"period": 3, "max_to_keep": 10}
    toy_cfg.train.output_dir = str(tmp_path / "a")
    seed_all_rng(0)  # as default_setup does with train.seed
    do_train(_args(), toy_cfg)
    want = _final(tmp_path / "a")

    toy_cfg.train.output_dir = str(tmp_path / "b")
    seed_all_rng(0)
    _train_until(toy_cfg, 4)  # checkpoint at iteration 2, crash at 4
    with open(tmp_path / "b" / "metrics.json", "a") as f:
        f.write('{"iteration": 5, "total_lo')  # a line cut off by kill -9
    _train_until(toy_cfg, 7, resume=True)  # resumes at 3, checkpoint at 5, crash at 7
    do_train(_args(True), toy_cfg)  # resumes at 6
    got = _final(tmp_path / "b")
    for k, v in want["model"].items():
        assert torch.equal(v, got["model"][k]), k
    for k, s in want["optimizer"]["state"].items():
        assert torch.equal(s["exp_avg"], got["optimizer"]["state"][k]["exp_avg"])
    # metrics.json has each iteration once (the crashed runs' extra lines are dropped)
    with open(tmp_path / "b" / "metrics.json") as f:
        records = [json.loads(line) for line in f]
    iters = [r["iteration"] for r in records if "total_loss" in r]
    assert iters == sorted(set(iters)) and iters[-1] == 9  # each logged step once
    assert "bbox/AP" in records[-1]  # the final evaluation


def _resume(cfg, max_iter):
    cfg.train.max_iter = max_iter
    seen = {}

    class Probe(HookBase):
        def before_train(self):
            seen["start_iter"] = self.trainer.start_iter

    orig = defaults.LiteDetrTrainer.register_hooks

    def register_hooks(self, hooks):
        orig(self, list(hooks) + [Probe()])

    defaults.LiteDetrTrainer.register_hooks = register_hooks
    try:
        do_train(_args(True), cfg)
    finally:
        defaults.LiteDetrTrainer.register_hooks = orig
    return seen["start_iter"]


def _truncate(path):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


@pytest.mark.parametrize(
    "damage",
    ["truncated", "empty", "missing", "garbage last_checkpoint", "garbage checkpoint"],
)
def test_resume_falls_back_to_the_newest_intact_checkpoint(toy_cfg, tmp_path, damage, caplog):
    out = toy_cfg.train.output_dir
    toy_cfg.train.max_iter = 6  # model_0000002, model_0000005, model_final (iteration 5)
    do_train(_args(), toy_cfg)
    final = os.path.join(out, "model_final.pth")
    last = os.path.join(out, "last_checkpoint")
    if damage == "truncated":
        _truncate(final)
    elif damage == "empty":
        open(final, "w").close()
    elif damage == "missing":
        os.remove(final)
    elif damage == "garbage checkpoint":
        with open(final, "wb") as f:
            f.write(os.urandom(1000))
    else:
        with open(last, "wb") as f:
            f.write(b"\xff\xfe\x00junk")
    assert _resume(toy_cfg, 8) == 6  # model_0000005.pth and model_final.pth: iteration 5
    warnings = [r.getMessage() for r in caplog.records if "--resume" in r.getMessage()]
    assert len(warnings) == 1
    if damage == "garbage last_checkpoint":  # the newest file is used
        assert "last_checkpoint is unreadable" in warnings[0]
        assert "model_final.pth instead" in warnings[0]
    else:  # the damaged file and the one used instead
        assert "model_final.pth" in warnings[0] and "model_0000005.pth instead" in warnings[0]


def test_resume_without_any_intact_checkpoint_names_the_files(toy_cfg):
    out = toy_cfg.train.output_dir
    toy_cfg.train.max_iter = 3
    do_train(_args(), toy_cfg)
    for name in ("model_0000002.pth", "model_final.pth"):
        _truncate(os.path.join(out, name))
    with pytest.raises(ConfigError, match="no intact checkpoint.*model_final.pth.*not a readable"):
        do_train(_args(True), toy_cfg)


def test_resume_with_another_model_is_refused(toy_cfg):
    toy_cfg.train.max_iter = 3
    do_train(_args(), toy_cfg)
    toy_cfg.model.num_preds = 4
    with pytest.raises(ConfigError, match=r"model_final.pth: it was written by another model.*box"):
        do_train(_args(True), toy_cfg)


def test_resume_with_another_encoder_variant_names_the_checkpoint_it_tried(toy_cfg):
    toy_cfg.train.max_iter = 3
    toy_cfg.model.variant = "H3L1-(2+1)x3/key_aware"
    do_train(_args(), toy_cfg)
    toy_cfg.model.variant = "H2L2-(2+1)x3/key_aware"
    with pytest.raises(ConfigError) as e:
        do_train(_args(True), toy_cfg)
    out = toy_cfg.train.output_dir
    assert str(e.value).startswith(
        f"Cannot resume from {out}/model_final.pth: checkpoint encoder variant "
        "'H3L1-(2+1)x3/key_aware' does not match the config's 'H2L2-(2+1)x3/key_aware'"
    )
    assert f"see {out}/config.yaml" in str(e.value)


def test_max_to_keep_counts_the_checkpoints_on_disk(toy_cfg):
    out = toy_cfg.train.output_dir
    toy_cfg.train.checkpointer = {"period": 1, "max_to_keep": 2}
    toy_cfg.train.max_iter = 4
    do_train(_args(), toy_cfg)
    _resume(toy_cfg, 7)
    _resume(toy_cfg, 9)
    kept = sorted(n for n in os.listdir(out) if n.startswith("model_0"))
    assert kept == ["model_0000007.pth", "model_0000008.pth"]
    assert os.path.isfile(os.path.join(out, "model_final.pth"))
