"""Lite-Deformable-DETR R50, H3L1-(2+1)x3 with KDA, 50 epochs on COCO (paper: 46.7 AP).

Data, batch (32), optimizer (lr 2e-4), schedule and ImageNet weights of the baseline,
``deformable_detr_r50_two_stage_50ep.py``.
"""

from .deformable_detr_r50_two_stage_50ep import (
    dataloader,
    datasets,
    lr_multiplier,
    optimizer,
    train,
)
from .models.lite_deformable_detr_r50 import baseline_encoder, model

train.output_dir = "./output/lite_deformable_detr_r50_h3l1_a2b3_50ep"
