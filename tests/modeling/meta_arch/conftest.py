import glob
import os

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.structures import Boxes, Instances

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

# R18, width 64, 2 decoder layers, 20 queries: the R50 model configs shrunk by overrides only
TINY_OVERRIDES = [
    "model.backbone.stages.depth=18",
    "model.neck.input_shapes.res3.channels=128",
    "model.neck.input_shapes.res4.channels=256",
    "model.neck.input_shapes.res5.channels=512",
    "model.embed_dim=64",
    "model.position_embedding.num_pos_feats=32",
    "model.encoder.feedforward_dim=128",
    "model.decoder.num_layers=2",
    "model.decoder.feedforward_dim=128",
    "model.num_queries=20",
    "model.select_box_nums_for_evaluation=30",
]
_DINO = ["model.denoising.num_dn_queries=10", "model.num_classes=3"]
# 4 classes (as the synthetic shapes), a shallower encoder; the backbone (detectron2's) is frozen:
# its backward would dominate the CPU time of the training tests
_DETR = ["model.backbone.freeze_at=5", "model.num_classes=4"]
_DETR_ENCODER = ["model.encoder.num_layers=2"]
_DETR_LITE_ENCODER = ["model.encoder.num_blocks=1", "model.encoder.low_feedforward_dim=64"]
# H-DETR's 300 + 1500 queries with k = 6 scaled down to 20 + 40 with k = 3
_HYBRID = ["model.num_queries_one2many=40", "model.one2many_repeats=3"]
# what the tests of each model config (projects/*/configs/models/<name>.py) add
MODEL_OVERRIDES = {
    "dino_r50": _DINO,
    "lite_dino_r50": _DINO + ["model.encoder.low_feedforward_dim=64"],
    "deformable_detr_r50": _DETR + _DETR_ENCODER,
    "lite_deformable_detr_r50": _DETR + _DETR_LITE_ENCODER,
    "h_detr_r50": _DETR + _DETR_ENCODER + _HYBRID,
    "lite_h_detr_r50": _DETR + _DETR_LITE_ENCODER + _HYBRID,
}


def tiny_cfg(name="lite_dino_r50", overrides=()):
    """The model config ``name`` shrunk by overrides, then ``overrides``."""
    (path,) = glob.glob(os.path.join(ROOT, "projects", "*", "configs", "models", name + ".py"))
    cfg = LazyConfig.load(path)
    return LazyConfig.apply_overrides(cfg, TINY_OVERRIDES + MODEL_OVERRIDES[name] + list(overrides))


def build_tiny_model(name="lite_dino_r50", overrides=(), seed=0):
    torch.manual_seed(seed)
    return instantiate(tiny_cfg(name, overrides).model)


@pytest.fixture
def build_tiny():
    """``build_tiny(name="lite_dino_r50", overrides=(), seed=0)`` -> the shrunk model."""
    return build_tiny_model


def _make_input(h, w, boxes, classes, out_hw=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    inst = Instances((h, w))
    inst.gt_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.as_tensor(classes, dtype=torch.int64)
    x = {
        "image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g),
        "instances": inst,
    }
    if out_hw is not None:
        x["height"], x["width"] = out_hw
    return x


@pytest.fixture
def make_input():
    """``make_input(h, w, boxes_xyxy, classes, out_hw=None)`` -> a detectron2 input dict."""
    return _make_input


@pytest.fixture
def tiny_config():
    """``tiny_config(name="lite_dino_r50", overrides=())`` -> the shrunk LazyConfig."""
    return tiny_cfg
