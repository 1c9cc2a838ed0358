"""Two-stage Deformable DETR R50 with box refinement, 50 epochs on COCO (the baseline of
Lite-Deformable-DETR (paper: 46.8 AP))."""

from ....configs.common.coco_schedule import lr_multiplier_50ep as lr_multiplier
from ....configs.common.data.coco_detr import dataloader, datasets
from ....configs.common.optim import AdamWDecayAll as optimizer
from ....configs.common.train import coco_train
from .models.deformable_detr_r50 import model

# Deformable DETR's optimizer: AdamW, lr 2e-4, weight decay 1e-4 on every parameter (its param
# groups set only the lr), backbone x0.1 (the common backbone_lr_factor) and sampling offsets x0.1
# (the release's lr_linear_proj_mult; its other name, reference_points, is a layer of the
# one-stage model only: here the reference boxes are the proposals)
optimizer.lr = 2e-4
optimizer.params.lr_multipliers = {"sampling_offsets": 0.1}

# 50 passes over COCO train2017 (train_net.py derives max_iter: 3,697 iterations per epoch at
# batch 32), lr x0.1 after epoch 40 (lr_multiplier); torchvision ImageNet weights
train = coco_train(epochs=50, output_dir="./output/deformable_detr_r50_two_stage_50ep")
# the release's total batch ("All models of Deformable DETR are trained with total batch size of
# 32": 16 GPUs x 2) at its lr 2e-4; with less memory, dataloader.train.total_batch_size=16 keeps
# lr and epochs as they are (twice the iterations), a recipe the release did not train
dataloader.train.total_batch_size = 32
