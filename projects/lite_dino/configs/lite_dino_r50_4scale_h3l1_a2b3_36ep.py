"""Lite-DINO-4scale R50, H3L1-(2+1)x3 with KDA, 36 epochs on COCO (paper: 50.4 AP)."""

from ....configs.common.coco_schedule import lr_multiplier_36ep as lr_multiplier
from ....configs.common.data.coco_detr import dataloader, datasets
from ....configs.common.optim import AdamWDecayAll as optimizer
from ....configs.common.train import train
from .models.lite_dino_r50 import baseline_encoder, model

# torchvision ImageNet weights (RGB input), as DINO
train.init_checkpoint = "detectron2://ImageNetPretrained/torchvision/R-50.pkl"
train.output_dir = "./output/lite_dino_r50_4scale_h3l1_a2b3_36ep"
# 36 passes over the training set (train_net.py derives max_iter: 7,393 iterations per epoch on
# COCO train2017 at batch 16); lr x0.1 after epoch 30 (lr_multiplier)
train.epochs = 36
train.max_iter = None
train.eval_period = 7500
train.checkpointer.period = 7500
train.device = "cuda"
dataloader.train.total_batch_size = 16  # the release's: 8 GPUs x 2
