"""DINO-4scale R50, 12 epochs on COCO (the baseline of Lite-DINO; the model, data and optimizer
of ``dino_r50_4scale_36ep.py``)."""

from ....configs.common.coco_schedule import lr_multiplier_12ep as lr_multiplier
from .dino_r50_4scale_36ep import dataloader, datasets, model, optimizer, train

train.output_dir = "./output/dino_r50_4scale_12ep"
train.epochs = 12  # lr x0.1 after epoch 11
