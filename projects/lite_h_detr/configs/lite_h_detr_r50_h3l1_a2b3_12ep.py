"""Lite-H-DETR R50, H3L1-(2+1)x3 with KDA, hybrid matching, 12 epochs on COCO."""

from ....configs.common.coco_schedule import lr_multiplier_12ep as lr_multiplier
from .lite_h_detr_r50_h3l1_a2b3_36ep import (
    baseline_encoder,
    dataloader,
    datasets,
    model,
    optimizer,
    train,
)

train.output_dir = "./output/lite_h_detr_r50_h3l1_a2b3_12ep"
train.epochs = 12  # lr x0.1 after epoch 11
