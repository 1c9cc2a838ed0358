"""Lite-H-DETR R50, H3L1-(2+1)x3 with KDA, hybrid matching, 36 epochs on COCO.

Data, optimizer (lr 2e-4), schedule and ImageNet weights of the baseline, ``h_detr_r50_36ep.py``.
"""

from .h_detr_r50_36ep import dataloader, datasets, lr_multiplier, optimizer, train
from .models.lite_h_detr_r50 import baseline_encoder, model

train.output_dir = "./output/lite_h_detr_r50_h3l1_a2b3_36ep"
