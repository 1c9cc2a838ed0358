import argparse
import copy
import json
import os

import pytest
import torch

from lite_detr.engine import EMAHook, ModelEMA, do_eval_only, do_train


def _args(resume=False):
    return argparse.Namespace(resume=resume, eval_only=False)


def _metrics(out):
    with open(os.path.join(out, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_train_clip_ema_checkpoint_and_eval(toy_cfg):
    toy_cfg.train.model_ema.enabled = True
    toy_cfg.train.clip_grad.enabled = True
    toy_cfg.train.max_iter = 20
    toy_cfg.train.log_period = 1
    out = toy_cfg.train.output_dir
    trainer = do_train(_args(), toy_cfg)
    assert trainer.iter == 20
    metrics = _metrics(out)
    grad_norms = [m["grad_norm"] for m in metrics if "grad_norm" in m]
    assert grad_norms, "clipping path did not record grad_norm"
    losses = [m["total_loss"] for m in metrics if "total_loss" in m]
    assert sum(losses[-4:]) < sum(losses[:4]), losses
    # final evaluation with the EMA weights produced COCO numbers
    assert any("bbox/AP" in m for m in metrics)
    ckpt = torch.load(os.path.join(out, "model_final.pth"), weights_only=False)
    ema = ckpt["trainer"]["hooks"]["EMAHook"]
    assert ema["num_updates"] == 20
    # the EMA differs from the raw weights (it averages), but has the same keys
    assert ema["state"].keys() == ckpt["model"].keys()
    assert not torch.equal(ema["state"]["box.weight"], ckpt["model"]["box.weight"])
    # evaluator files renamed into place (no temporary folder left)
    assert sorted(os.listdir(os.path.join(out, "inference"))) == [
        "coco_instances_results.json",
        "eval_results.json",
        "instances_predictions.pth",
    ]
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(out))
    # --eval-only evaluates the EMA weights from the checkpoint
    toy_cfg.train.init_checkpoint = os.path.join(out, "model_final.pth")
    ret = do_eval_only(toy_cfg)
    assert "AP" in ret["bbox"]


def test_resume_continues_at_right_iteration_with_same_optimizer_state(toy_cfg):
    toy_cfg.train.max_iter = 3  # checkpoints model_final at iteration 2
    out = toy_cfg.train.output_dir
    do_train(_args(), toy_cfg)
    saved = torch.load(os.path.join(out, "model_final.pth"), weights_only=False)
    assert saved["iteration"] == 2

    toy_cfg.train.max_iter = 5
    seen = {}
    from detectron2.engine import HookBase

    class Probe(HookBase):
        def before_train(self):
            seen["start_iter"] = self.trainer.start_iter
            seen["optim"] = copy.deepcopy(self.trainer.optimizer.state_dict())

    import lite_detr.engine.defaults as defaults

    orig = defaults.LiteDetrTrainer.register_hooks

    def register_hooks(self, hooks):
        orig(self, list(hooks) + [Probe()])

    defaults.LiteDetrTrainer.register_hooks = register_hooks
    try:
        trainer = do_train(_args(resume=True), toy_cfg)
    finally:
        defaults.LiteDetrTrainer.register_hooks = orig
    assert seen["start_iter"] == 3
    assert trainer.iter == 5
    want = saved["optimizer"]["state"]
    got = seen["optim"]["state"]
    assert want.keys() == got.keys()
    for k in want:
        assert int(got[k]["step"]) == int(want[k]["step"]) == 3
        torch.testing.assert_close(got[k]["exp_avg"], want[k]["exp_avg"])


def test_nan_loss_stops_with_iteration_and_keeps_last_checkpoint(toy_cfg):
    toy_cfg.model.nan_at_call = 4  # iteration 4 returns a NaN loss
    toy_cfg.train.max_iter = 10
    out = toy_cfg.train.output_dir
    with pytest.raises(FloatingPointError, match="iteration 4"):
        do_train(_args(), toy_cfg)
    with open(os.path.join(out, "last_checkpoint")) as f:
        assert f.read().strip() == "model_0000002.pth"
    assert not os.path.exists(os.path.join(out, "model_final.pth"))
    ckpt = torch.load(os.path.join(out, "model_0000002.pth"), weights_only=False)
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_amp_on_cpu(toy_cfg, dtype):
    toy_cfg.train.amp.enabled = True
    toy_cfg.train.amp.dtype = dtype
    toy_cfg.train.max_iter = 2
    trainer = do_train(_args(), toy_cfg)
    assert trainer.iter == 2
    has_scaler = trainer.grad_scaler is not None
    assert has_scaler == (dtype == "float16")  # bf16 needs no loss scaling
    ckpt = torch.load(os.path.join(toy_cfg.train.output_dir, "model_final.pth"), weights_only=False)
    assert ("grad_scaler" in ckpt["trainer"]) == has_scaler


def test_model_ema_update_and_state_roundtrip():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = ModelEMA(model, decay=0.5)
    start = ema.state["0.weight"].clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update(model)  # ramped decay min(0.5, 2/11) = 2/11
    d = 2 / 11
    torch.testing.assert_close(ema.state["0.weight"], d * start + (1 - d) * (start + 1))
    other = ModelEMA(model, decay=0.5)
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == 1
    torch.testing.assert_close(other.state["0.weight"], ema.state["0.weight"])
    with pytest.raises(ValueError, match="decay"):
        ModelEMA(model, decay=1.0)
    hook = EMAHook(model, decay=0.5)
    before = model[0].weight.clone()
    with hook.apply():
        torch.testing.assert_close(model[0].weight, hook.ema.state["0.weight"])
    torch.testing.assert_close(model[0].weight, before)  # training weights restored
