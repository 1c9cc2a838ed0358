"""Lite-DINO-4scale Swin-T, H3L1-(2+1)x3 with KDA, 36 epochs on COCO (paper: 53.9 AP at 159
GFLOPs).

Data, optimizer (backbone lr x0.1, weight decay on every parameter), schedule and model of
``lite_dino_r50_4scale_h3l1_a2b3_36ep.py``; only the backbone and the neck's input channels
differ (``models/swin_t.py``). The other variants are the same overrides as for R50, e.g.
``model.encoder.num_high_levels=2`` for H2L2.
"""

from .lite_dino_r50_4scale_h3l1_a2b3_36ep import (
    dataloader,
    datasets,
    lr_multiplier,
    optimizer,
    train,
)
from .models.lite_dino_swin_t import baseline_encoder, model

# the ImageNet-1k Swin-T file of the official Swin release, converted with
# python tools/convert_swin_checkpoint.py swin_tiny_patch4_window7_224.pth swin_tiny_d2.pth
train.init_checkpoint = "swin_tiny_d2.pth"
train.output_dir = "./output/lite_dino_swin_t_4scale_h3l1_a2b3_36ep"

# Denoising box noise: the release's Swin config file says 0.4, but DINO's training commands
# override it with dn_box_noise_scale=1.0 for every backbone, and our R50 configs use 1.0; 1.0
# keeps Swin-T and R50 apart by the backbone only (model.denoising.box_noise_scale=0.4 gives the
# config file's value)
model.denoising.box_noise_scale = 1.0
