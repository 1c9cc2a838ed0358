"""Lite-DINO-4scale R50, H3L1-(6+1)x1 with KDA, 36 epochs on COCO (the released s3ex1).

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

model.encoder.num_high_updates = 6
model.encoder.num_blocks = 1

train.output_dir = "./output/lite_dino_r50_4scale_h3l1_a6b1_36ep"
