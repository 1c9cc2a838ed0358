"""H-DETR R50 (two-stage Deformable DETR + hybrid matching), 12 epochs on COCO (the
baseline of Lite-H-DETR)."""

from ....configs.common.coco_schedule import lr_multiplier_12ep as lr_multiplier
from .h_detr_r50_36ep import dataloader, datasets, model, optimizer, train

train.output_dir = "./output/h_detr_r50_12ep"
train.epochs = 12  # lr x0.1 after epoch 11
