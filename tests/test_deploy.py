"""lite_detr.deploy.optimize_for_cpu_inference: the detectors are built plain (detectron2 Conv2d +
BatchNorm, nn.Linear, FFN); the deployment step folds the BatchNorms, runs the linears through
oneDNN and the FFN in token chunks, keeps the state dict and gives the plain model's detections
within float rounding, in fp32 and bf16; the tools time and run the deployed model."""

import contextlib
import copy

import pytest
import torch
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from torch import nn

import lite_detr.precision as precision
from lite_detr.deploy import optimize_for_cpu_inference, swap_module_class
from lite_detr.engine import Predictor, load_config
from lite_detr.layers import FFN, OneDNNLinear, TokenChunkedFFN
from lite_detr.modeling.backbone import BatchNormFoldedConv2d

from .conftest import SHAPES_CFG, TINY_MODEL
from .modeling.meta_arch.conftest import build_tiny_model
from .tools.conftest import load_tool

DEPLOYED = {BatchNormFoldedConv2d, OneDNNLinear, TokenChunkedFFN}


def classes(model):
    return {type(m) for m in model.modules()}


@pytest.fixture(scope="module")
def models():
    """(plain, deployed): the tiny Lite-DINO R50 with trained-looking FrozenBatchNorm statistics
    (the init's are an identity, which folding would leave exact), and its deployed copy."""
    plain = build_tiny_model("lite_dino_r50").eval()
    assert not classes(plain) & DEPLOYED
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in plain.modules():
            if isinstance(m, FrozenBatchNorm2d):
                for t in (m.weight, m.running_var):
                    t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.75)
                for t in (m.bias, m.running_mean):
                    t.copy_(torch.rand(t.shape, generator=g) * 0.2 - 0.1)
    return plain, optimize_for_cpu_inference(copy.deepcopy(plain).train())


@contextlib.contextmanager
def small_thresholds():
    """The oneDNN linears and the token chunks from 64 rows: the tiny model's 96x128 image has
    ~250 tokens, fewer than the 1024 of an 800x1333 one's smallest level."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(OneDNNLinear, "onednn_min_rows", 64)
        mp.setattr(TokenChunkedFFN, "chunk", 64)
        yield


@pytest.fixture(scope="module")
def fp32_runs(models):
    """The detections of the plain and of the deployed model (fp32), their encoder memories, the
    rows of the deployed FFNs' first linear at each call, and the input."""
    image = torch.randint(0, 256, (3, 96, 128), generator=torch.Generator().manual_seed(0))
    inputs = [{"image": image.to(torch.uint8)}]
    memories, rows = [], []
    hooks = [m.encoder.register_forward_hook(lambda *a: memories.append(a[2])) for m in models]
    hooks += [
        m.linear1.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[:-1].numel()))
        for m in models[1].modules()
        if isinstance(m, TokenChunkedFFN)
    ]
    with torch.no_grad(), small_thresholds():
        detections = [m(inputs)[0]["instances"] for m in models]
    for h in hooks:
        h.remove()
    return detections, memories, rows, inputs


@pytest.mark.parametrize("name", ["deformable_detr_r50", "lite_h_detr_r50"])
def test_built_detectors_are_plain_pytorch(name):
    """(Lite-DINO: the ``models`` fixture.)"""
    model = build_tiny_model(name)
    found = classes(model)
    assert not found & DEPLOYED
    assert {nn.Linear, FFN, Conv2d, FrozenBatchNorm2d} <= found
    convs = [m for m in model.backbone.modules() if isinstance(m, Conv2d)]
    assert convs and all(isinstance(m.norm, FrozenBatchNorm2d) for m in convs)


def test_deployment_swaps_forwards_only(models):
    plain, deployed = models
    assert not deployed.training
    assert DEPLOYED <= classes(deployed) and not classes(deployed) & {nn.Linear, FFN}
    # the same parameters and buffers: checkpoints load either way
    expected, state = plain.state_dict(), deployed.state_dict()
    assert list(state) == list(expected)
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    # idempotent
    before = [type(m) for m in deployed.modules()]
    assert optimize_for_cpu_inference(deployed) is deployed
    assert [type(m) for m in deployed.modules()] == before
    assert swap_module_class(deployed, nn.Linear, OneDNNLinear) == 0
    with pytest.raises(TypeError, match="must be a subclass of Linear"):
        swap_module_class(deployed, nn.Linear, TokenChunkedFFN)


def test_deployed_model_gives_the_plain_models_detections(models, fp32_runs):
    (expected, out), (ref, memory), rows, _ = fp32_runs
    # the deployed paths ran: the FFN in chunks of 64 tokens, and the outputs moved by rounding
    ffns = sum(isinstance(m, TokenChunkedFFN) for m in models[1].modules())  # each called once
    assert len(rows) > ffns and max(rows) == 64
    assert not torch.equal(memory, ref)
    assert float((memory - ref).abs().max()) < 1e-4 * float(ref.abs().max())
    assert len(out) == len(expected) > 0
    assert torch.equal(out.pred_classes, expected.pred_classes)
    torch.testing.assert_close(out.scores, expected.scores, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.pred_boxes.tensor, expected.pred_boxes.tensor, rtol=0, atol=1e-3)


def test_bf16_inference_of_the_deployed_model(models, fp32_runs, monkeypatch):
    """bfloat16 autocast over the deployed paths (folded convs and 1x1 convolutions in bf16, the
    heads in float32) detects what the deployed model detects in fp32."""
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: "avx512_bf16")
    deployed = copy.deepcopy(models[1])  # bf16_inference wraps the heads' forwards
    (_, fp32), _, _, inputs = fp32_runs
    with torch.no_grad(), small_thresholds(), precision.bf16_inference(deployed) as used:
        bf16 = deployed(inputs)[0]["instances"]
    assert used == "bf16"
    assert bf16.scores.dtype == bf16.pred_boxes.tensor.dtype == torch.float32
    assert not torch.equal(fp32.scores, bf16.scores)  # bf16 did run
    # the best detections: same classes, scores within bf16's rounding
    assert torch.equal(fp32.pred_classes[:5], bf16.pred_classes[:5])
    torch.testing.assert_close(bf16.scores[:5], fp32.scores[:5], rtol=0, atol=0.02)


def test_the_tools_run_the_deployed_model(monkeypatch):
    """The predictor (tools/demo.py, tools/run_demo.py) deploys its model on the CPU;
    tools/benchmark.py times the deployed model."""
    cfg = load_config(SHAPES_CFG, TINY_MODEL + ["train.device=cpu"])
    model = Predictor(cfg, "").model
    assert not model.training and DEPLOYED <= classes(model)

    benchmark = load_tool("benchmark")
    timed = []
    monkeypatch.setattr(
        benchmark, "optimize_for_cpu_inference", lambda m: timed.append(m) or m.eval()
    )
    benchmark.benchmark(cfg, ("inference",), input_size=(64, 96), warmup=0, iters=1)
    assert len(timed) == 1 and isinstance(timed[0], type(model))
