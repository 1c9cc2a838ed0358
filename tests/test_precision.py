"""lite_detr.precision: bfloat16 CPU inference gives fp32's detections on a model whose scores are
spread (the heads and the selections stay float32); without bfloat16 instructions one line says
so and the model runs in fp32."""

import logging

import pytest
import torch
from detectron2.config import instantiate

import lite_detr.precision as precision
from lite_detr.engine import Predictor, load_config
from lite_detr.export import InferenceDetector

from .conftest import SHAPES_CFG, TINY_MODEL


@pytest.fixture(scope="module")
def spread_model():
    """The tiny Lite-DINO with class scores spread over (0.5, 1) by its class heads; its encoder
    proposals score alike (zero class head), so that both precisions select the same tokens and
    the test compares the layers that bf16 changes, not a reshuffled near-tie of random weights."""
    torch.manual_seed(0)
    model = instantiate(load_config(SHAPES_CFG, TINY_MODEL).model).eval()
    with torch.no_grad():
        model.enc_class_embed.weight.zero_()
        model.enc_class_embed.bias.zero_()
        for head in model.decoder.class_embed:
            head.weight.mul_(2.0)
            head.bias.copy_(torch.linspace(-4, 0, head.bias.numel()))
        for head in model.decoder.bbox_embed:  # box refinement at work, in float32
            head.layers[-1].weight.normal_(std=0.01)
    return model


def _detect(model, image, prec):
    with torch.no_grad(), precision.bf16_inference(model, prec) as used:
        return used, InferenceDetector(model, return_selection=True)(image)


def test_bf16_gives_the_labels_of_fp32(spread_model, monkeypatch):
    # runs where autocast's bfloat16 does (any CPU; slow without the instructions)
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: "avx512_bf16")
    image = torch.rand(3, 128, 160, generator=torch.Generator().manual_seed(0)) * 255
    used32, (boxes, scores, labels, _, selected) = _detect(spread_model, image, "fp32")
    used16, (b_boxes, b_scores, b_labels, _, b_selected) = _detect(spread_model, image, "bf16")
    assert (used32, used16) == ("fp32", "bf16")
    assert scores.dtype == b_scores.dtype == boxes.dtype == b_boxes.dtype == torch.float32
    assert scores.max() - scores.min() > 0.2  # spread scores
    assert torch.equal(selected, b_selected)
    assert not torch.equal(scores, b_scores)  # bf16 did run: the scores moved a little ...
    # ... by less than the gaps between most detections: each fp32 detection has a bf16 one of
    # its label within 0.01 in score and 1 px in box (one-to-one), but at the top-k cut-off
    free = torch.ones(len(b_scores), dtype=torch.bool)
    for i in range(len(scores)):
        ok = free & (b_labels == labels[i]) & ((b_scores - scores[i]).abs() < 0.01)
        ok &= (b_boxes - boxes[i]).abs().amax(-1) < 1.0
        if not ok.any():
            assert scores[i] < b_scores.min() + 0.01, f"detection {i} has no bf16 counterpart"
            continue
        free[ok.nonzero()[0, 0]] = False
    assert int((~free).sum()) >= len(scores) - 2
    assert torch.equal(labels[:10], b_labels[:10])  # the top detections, in order


def test_fallback_to_fp32_without_bf16_instructions(spread_model, monkeypatch, caplog):
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: None)
    image = torch.rand(3, 128, 160, generator=torch.Generator().manual_seed(1)) * 255
    with caplog.at_level(logging.WARNING, logger="lite_detr.precision"):
        used, out = _detect(spread_model, image, "bf16")
    assert used == "fp32"
    lines = [r.getMessage() for r in caplog.records if r.name == "lite_detr.precision"]
    assert len(lines) == 1 and "no bfloat16 instructions" in lines[0] and "fp32" in lines[0]
    _, expected = _detect(spread_model, image, "fp32")
    assert all(torch.equal(a, b) for a, b in zip(out, expected))


def test_predictor_precision(monkeypatch, caplog):
    cfg = load_config(SHAPES_CFG, TINY_MODEL + ["train.device=cpu"])
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: None)
    with caplog.at_level(logging.WARNING, logger="lite_detr.precision"):
        assert Predictor(cfg, "", "bf16").precision == "fp32"
    assert "running in fp32 instead of bf16" in caplog.text
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: "amx_bf16")
    predictor = Predictor(cfg, "", "bf16")
    assert predictor.precision == "bf16"
    rgb = (torch.rand(100, 120, 3, generator=torch.Generator().manual_seed(2)) * 255).byte()
    instances = predictor(rgb.numpy())
    assert instances.scores.dtype == torch.float32 and len(instances) > 0
    with pytest.raises(ValueError, match="precision must be one of"):
        precision.resolve_precision("fp16")
