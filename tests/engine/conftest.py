import os

import pytest
import torch
from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig
from detectron2.solver import WarmupParamScheduler
from detectron2.solver.build import get_default_optimizer_params
from detectron2.structures import Boxes, Instances
from fvcore.common.param_scheduler import MultiStepParamScheduler
from torch import nn

from lite_detr.data import DetrDatasetMapper, register_shapes
from lite_detr.modeling.variant_tag import VariantTag

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class ToyDetector(nn.Module):
    """A stand-in detector: regresses the first GT box and class from pooled pixels."""

    def __init__(
        self,
        num_classes: int = 4,
        num_preds: int = 3,
        nan_at_call: int = -1,
        dropout: float = 0.0,
        variant: str = "",
    ):
        super().__init__()
        if variant:  # saved with the weights, as the Lite DETR models' encoder variant
            self.variant_tag = VariantTag(encoder=variant)
        self.nan_at_call, self.calls = nan_at_call, 0
        self.dropout = nn.Dropout(dropout)  # draws from torch's RNG in training
        self.conv = nn.Conv2d(3, 8, 5, stride=4)
        self.norm = nn.BatchNorm2d(8)  # a buffer-carrying layer, for EMA's buffer path
        self.box = nn.Linear(8, 4 * num_preds)
        self.cls = nn.Linear(8, num_classes * num_preds)
        self.num_classes, self.num_preds = num_classes, num_preds
        self.register_buffer("pixel_scale", torch.tensor(1 / 255.0), persistent=False)

    @property
    def device(self):
        return self.pixel_scale.device

    def forward(self, batched_inputs):
        feats = []
        for x in batched_inputs:
            img = x["image"].to(self.device).float()[None] * self.pixel_scale
            feats.append(self.norm(self.conv(img)).relu().mean((2, 3)))
        f = self.dropout(torch.cat(feats))
        boxes = self.box(f).sigmoid().view(len(f), self.num_preds, 4)
        logits = self.cls(f).view(len(f), self.num_preds, self.num_classes)
        if self.training:
            loss_box, loss_cls = 0, 0
            for i, x in enumerate(batched_inputs):
                inst = x["instances"]
                h, w = inst.image_size
                if len(inst) == 0:
                    continue
                gt = inst.gt_boxes.tensor[0] / torch.tensor([w, h, w, h])
                loss_box = loss_box + (boxes[i, 0] - gt).abs().sum()
                loss_cls = loss_cls + nn.functional.cross_entropy(
                    logits[i, :1], inst.gt_classes[:1]
                )
            if self.calls == self.nan_at_call:
                loss_box = loss_box * float("nan")
            self.calls += 1
            return {"loss_box": loss_box / len(f), "loss_cls": loss_cls / len(f)}
        results = []
        for i, x in enumerate(batched_inputs):
            h, w = x.get("height", x["image"].shape[1]), x.get("width", x["image"].shape[2])
            scores, classes = logits[i].softmax(-1).max(-1)
            inst = Instances((h, w))
            inst.pred_boxes = Boxes(boxes[i] * torch.tensor([w, h, w, h]))
            inst.scores, inst.pred_classes = scores, classes
            results.append({"instances": inst})
        return results


class ImageDeletingMapper(DetrDatasetMapper):
    """``DetrDatasetMapper`` that deletes the image of the 20th sample it maps (in each process
    that maps), just before reading it: an image deleted during training, after the first
    checkpoints of the toy config (period 3, 4 images per iteration)."""

    DELETE_AT = 20

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = 0

    def __call__(self, dataset_dict):
        self.calls += 1
        if self.calls == self.DELETE_AT and os.path.exists(dataset_dict["file_name"]):
            os.remove(dataset_dict["file_name"])
        return super().__call__(dataset_dict)


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory):
    """A 16/8-image, 128 px shapes dataset registered as ``engine_shapes_{train,val}``."""
    root = tmp_path_factory.mktemp("datasets")
    register_shapes("engine_shapes", root=str(root), num_train=16, num_val=8, image_size=128)
    return "engine_shapes"


@pytest.fixture
def toy_cfg(tiny_shapes, tmp_path):
    """The shapes data config + the common train keys, with the toy model, on CPU."""
    cfg = LazyConfig.load(os.path.join(ROOT, "configs/common/data/shapes.py"))
    cfg.train = LazyConfig.load(os.path.join(ROOT, "configs/common/train.py")).train
    cfg.model = L(ToyDetector)(num_classes=4)
    cfg.optimizer = L(torch.optim.AdamW)(
        params=L(get_default_optimizer_params)(), lr=1e-2, weight_decay=1e-4
    )
    cfg.lr_multiplier = L(WarmupParamScheduler)(
        scheduler=L(MultiStepParamScheduler)(
            values=[1.0, 0.1], milestones=[1000], num_updates=2000
        ),
        warmup_length=0.0,
        warmup_factor=1.0,
    )
    cfg.dataloader.train.dataset.names = f"{tiny_shapes}_train"
    cfg.dataloader.test.dataset.names = f"{tiny_shapes}_val"
    cfg.dataloader.train.num_workers = 0
    cfg.dataloader.test.num_workers = 0
    cfg.dataloader.input_size = 128
    cfg.train.update(
        output_dir=str(tmp_path / "out"),
        device="cpu",
        max_iter=6,
        eval_period=0,
        log_period=2,
        checkpointer={"period": 3, "max_to_keep": 10},
        seed=0,
    )
    return cfg
