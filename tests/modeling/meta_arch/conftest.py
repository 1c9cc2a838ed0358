import os

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.structures import Boxes, Instances

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
MODEL_CONFIGS = os.path.join(ROOT, "projects", "lite_dino", "configs", "models")

# R18, width 64, 2 decoder layers, few queries: the R50 model configs shrunk by overrides only
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
    "model.denoising.num_dn_queries=10",
    "model.num_classes=3",
    "model.select_box_nums_for_evaluation=30",
]


def tiny_cfg(name="lite_dino_r50", overrides=()):
    cfg = LazyConfig.load(os.path.join(MODEL_CONFIGS, name + ".py"))
    extra = ["model.encoder.low_feedforward_dim=64"] if name.startswith("lite") else []
    return LazyConfig.apply_overrides(cfg, TINY_OVERRIDES + extra + list(overrides))


@pytest.fixture
def build_tiny():
    def build(name="lite_dino_r50", overrides=(), seed=0):
        torch.manual_seed(seed)
        return instantiate(tiny_cfg(name, overrides).model)

    return build


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
