"""Lite-Deformable-DETR R50, H3L1-(2+1)x3 with KDA, 12 epochs on COCO."""

from ....configs.common.coco_schedule import lr_multiplier_12ep as lr_multiplier
from .lite_deformable_detr_r50_h3l1_a2b3_50ep import (
    baseline_encoder,
    dataloader,
    datasets,
    model,
    optimizer,
    train,
)

train.output_dir = "./output/lite_deformable_detr_r50_h3l1_a2b3_12ep"
train.epochs = 12  # lr x0.1 after epoch 11
