"""Lite-H-DETR, ResNet-50, H3L1-(2+1)x3 with key-aware deformable attention (KDA).

H-DETR R50 (hybrid matching) with the interleaved encoder of Lite-Deformable-DETR; the same
overrides select the variants (``model.encoder.num_high_levels=2``, ...), and
``model.encoder='${baseline_encoder}'`` swaps the 6-layer deformable encoder back in.
"""

from lite_detr.modeling.meta_arch.h_detr import LiteHDETR

from ....lite_deformable_detr.configs.models.lite_deformable_detr_r50 import baseline_encoder
from ....lite_deformable_detr.configs.models.lite_deformable_detr_r50 import model as _lite
from .h_detr_r50 import model

model._target_ = LiteHDETR
model.encoder = _lite.encoder  # the decoder's cross-attention follows its attention (KDA)
