"""Two-stage Deformable DETR R50 with box refinement, 12 epochs on COCO (the baseline of
Lite-Deformable-DETR)."""

from ....configs.common.coco_schedule import lr_multiplier_12ep as lr_multiplier
from .deformable_detr_r50_two_stage_50ep import dataloader, datasets, model, optimizer, train

train.output_dir = "./output/deformable_detr_r50_two_stage_12ep"
train.epochs = 12  # lr x0.1 after epoch 11
