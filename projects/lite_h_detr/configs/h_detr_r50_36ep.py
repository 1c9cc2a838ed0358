"""H-DETR R50 (two-stage Deformable DETR + hybrid matching), 36 epochs on COCO (the
baseline of Lite-H-DETR)."""

from ....configs.common.coco_schedule import lr_multiplier_36ep as lr_multiplier
from ....configs.common.data.coco_detr import dataloader, datasets
from ....configs.common.optim import AdamWDecayAll as optimizer
from ....configs.common.train import coco_train
from .models.h_detr_r50 import model

# H-DETR's optimizer (Deformable DETR's): AdamW, lr 2e-4, weight decay 1e-4 on every parameter
# (its param groups set only the lr), backbone x0.1 (the common backbone_lr_factor) and sampling
# offsets x0.1 (the release's lr_linear_proj_mult; its other name, reference_points, is a layer of
# the one-stage model only: here the reference boxes are the proposals)
optimizer.lr = 2e-4
optimizer.params.lr_multipliers = {"sampling_offsets": 0.1}

# 36 passes over COCO train2017 (train_net.py derives max_iter: 7,393 iterations per epoch at
# batch 16), lr x0.1 after epoch 30 (lr_multiplier); torchvision ImageNet weights
train = coco_train(epochs=36, output_dir="./output/h_detr_r50_36ep")
dataloader.train.total_batch_size = 16  # the release's: 8 GPUs x 2
