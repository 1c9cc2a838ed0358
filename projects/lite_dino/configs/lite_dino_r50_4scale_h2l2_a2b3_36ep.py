"""Lite-DINO-4scale R50, H2L2-(2+1)x3 with KDA, 36 epochs on COCO (the released s2ex3).

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

model.encoder.num_high_levels = 2

train.output_dir = "./output/lite_dino_r50_4scale_h2l2_a2b3_36ep"
