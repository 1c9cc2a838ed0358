"""Lite-DINO-4scale R50, H3L1-(6+1)x1 with KDA, 36 epochs on COCO
(the released s3ex1)."""

from ....configs.common.coco_schedule import lr_multiplier_36ep as lr_multiplier
from ....configs.common.data.coco_detr import dataloader, datasets
from ....configs.common.optim import AdamWDecayAll as optimizer
from ....configs.common.train import train
from .models.lite_dino_r50 import baseline_encoder, model

model.encoder.num_high_updates = 6
model.encoder.num_blocks = 1

# torchvision ImageNet weights (RGB input), as DINO
train.init_checkpoint = "detectron2://ImageNetPretrained/torchvision/R-50.pkl"
train.output_dir = "./output/lite_dino_r50_4scale_h3l1_a6b1_36ep"
train.max_iter = 36 * 7500
train.eval_period = 7500
train.checkpointer.period = 7500
train.device = "cuda"
dataloader.train.total_batch_size = 16
