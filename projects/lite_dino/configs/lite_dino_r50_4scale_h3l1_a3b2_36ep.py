"""Lite-DINO-4scale R50, H3L1-(3+1)x2 with KDA, 36 epochs on COCO.

Data, optimizer, schedule and ImageNet weights of ``lite_dino_r50_4scale_h3l1_a2b3_36ep.py``.
"""

from .lite_dino_r50_4scale_h3l1_a2b3_36ep import (
    baseline_encoder,
    dataloader,
    datasets,
    lr_multiplier,
    model,
    optimizer,
    train,
)

model.encoder.num_high_updates = 3
model.encoder.num_blocks = 2

train.output_dir = "./output/lite_dino_r50_4scale_h3l1_a3b2_36ep"
