"""DINO-4scale Swin-T, 36 epochs on COCO (the baseline of Lite-DINO Swin-T; paper: 54.1 AP).

Data, optimizer and schedule of ``dino_r50_4scale_36ep.py``; only the backbone and the neck's
input channels differ (``models/swin_t.py``).
"""

from .dino_r50_4scale_36ep import dataloader, datasets, lr_multiplier, optimizer, train
from .models.dino_swin_t import model

# the ImageNet-1k Swin-T file of the official Swin release, converted with
# python tools/convert_swin_checkpoint.py swin_tiny_patch4_window7_224.pth swin_tiny_d2.pth
train.init_checkpoint = "swin_tiny_d2.pth"
train.output_dir = "./output/dino_swin_t_4scale_36ep"

# Denoising box noise 1.0 (not the 0.4 of the release's Swin config file): see
# lite_dino_swin_t_4scale_h3l1_a2b3_36ep.py
model.denoising.box_noise_scale = 1.0
