"""Lite-Deformable-DETR R50, H3L1-(6+1)x1 with KDA, 50 epochs on COCO."""

from .lite_deformable_detr_r50_h3l1_a2b3_50ep import (
    baseline_encoder,
    dataloader,
    datasets,
    lr_multiplier,
    model,
    optimizer,
    train,
)

model.encoder.num_high_updates = 6
model.encoder.num_blocks = 1

train.output_dir = "./output/lite_deformable_detr_r50_h3l1_a6b1_50ep"
