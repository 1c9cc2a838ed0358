"""Lite-Deformable-DETR R50, H2L2-(2+1)x3 with KDA, 50 epochs on COCO."""

from ....configs.common.coco_schedule import lr_multiplier_50ep as lr_multiplier
from ....configs.common.data.coco_detr import dataloader
from ....configs.common.optim import AdamW as optimizer
from ....configs.common.train import train
from .models.lite_deformable_detr_r50 import baseline_encoder, model

model.encoder.num_high_levels = 2

# Deformable DETR's lr: 2e-4 (backbone 2e-5 through the common backbone_lr_factor)
optimizer.lr = 2e-4

# torchvision ImageNet weights (RGB input)
train.init_checkpoint = "detectron2://ImageNetPretrained/torchvision/R-50.pkl"
train.output_dir = "./output/lite_deformable_detr_r50_h2l2_a2b3_50ep"
train.max_iter = 50 * 7500
train.eval_period = 7500
train.checkpointer.period = 7500
train.device = "cuda"
dataloader.train.total_batch_size = 16
