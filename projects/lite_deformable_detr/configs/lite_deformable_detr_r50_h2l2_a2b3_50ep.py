"""Lite-Deformable-DETR R50, H2L2-(2+1)x3 with KDA, 50 epochs on COCO."""

from .lite_deformable_detr_r50_h3l1_a2b3_50ep import (
    baseline_encoder,
    dataloader,
    datasets,
    lr_multiplier,
    model,
    optimizer,
    train,
)

model.encoder.num_high_levels = 2

train.output_dir = "./output/lite_deformable_detr_r50_h2l2_a2b3_50ep"
