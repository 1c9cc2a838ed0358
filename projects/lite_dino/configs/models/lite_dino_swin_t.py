"""Lite-DINO-4scale, Swin-T, H3L1-(2+1)x3 with KDA: ``models/lite_dino_r50.py`` with the Swin-T
backbone (``models/swin_t.py``). The variants are the same overrides as for R50
(``model.encoder.num_high_levels=2``, ...)."""

from .lite_dino_r50 import baseline_encoder, model
from .swin_t import backbone, neck_input_shapes

model.backbone = backbone
model.neck.input_shapes = neck_input_shapes
