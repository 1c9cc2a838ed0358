"""Lite-DINO-4scale R50, H3L1-(2+1)x3 with KDA, 36 epochs on COCO (paper: 50.4 AP)."""

from ....configs.common.coco_schedule import lr_multiplier_36ep as lr_multiplier
from ....configs.common.data.coco_detr import dataloader, datasets
from ....configs.common.optim import AdamWDecayAll as optimizer
from ....configs.common.train import coco_train
from .models.lite_dino_r50 import baseline_encoder, model

# 36 passes over COCO train2017 (train_net.py derives max_iter: 7,393 iterations per epoch at
# batch 16), lr x0.1 after epoch 30 (lr_multiplier); torchvision ImageNet weights, as DINO
train = coco_train(epochs=36, output_dir="./output/lite_dino_r50_4scale_h3l1_a2b3_36ep")
dataloader.train.total_batch_size = 16  # the release's: 8 GPUs x 2
