"""DINO-4scale Swin-T, 12 epochs on COCO (the model, data, optimizer and ImageNet weights of
``dino_swin_t_4scale_36ep.py``)."""

from ....configs.common.coco_schedule import lr_multiplier_12ep as lr_multiplier
from .dino_swin_t_4scale_36ep import dataloader, datasets, model, optimizer, train

train.output_dir = "./output/dino_swin_t_4scale_12ep"
train.epochs = 12  # lr x0.1 after epoch 11
