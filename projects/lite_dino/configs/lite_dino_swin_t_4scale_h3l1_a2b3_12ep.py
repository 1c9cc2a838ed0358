"""Lite-DINO-4scale Swin-T, H3L1-(2+1)x3 with KDA, 12 epochs on COCO (the model, data, optimizer
and ImageNet weights of ``lite_dino_swin_t_4scale_h3l1_a2b3_36ep.py``)."""

from ....configs.common.coco_schedule import lr_multiplier_12ep as lr_multiplier
from .lite_dino_swin_t_4scale_h3l1_a2b3_36ep import (
    baseline_encoder,
    dataloader,
    datasets,
    model,
    optimizer,
    train,
)

train.output_dir = "./output/lite_dino_swin_t_4scale_h3l1_a2b3_12ep"
train.epochs = 12  # lr x0.1 after epoch 11
