"""Lite-H-DETR, ResNet-50, H3L1-(2+1)x3 with key-aware deformable attention (KDA).

H-DETR R50 (``h_detr_r50.py``) with only the encoder changed: Lite DETR's interleaved encoder at
H-DETR's widths (FFN 2048, dropout 0), and KDA in the decoder's cross-attention too. The
overrides of Lite-Deformable-DETR select the variants (``model.encoder.num_high_levels=2``,
...); ``model.encoder='${baseline_encoder}'`` swaps the 6-layer deformable encoder back in.
"""

from detectron2.config import LazyCall as L

from lite_detr.modeling import InterleavedEncoder
from lite_detr.modeling.meta_arch import LiteHDETR

from .h_detr_r50 import model

# H-DETR's 6-layer encoder, for ``model.encoder='${baseline_encoder}'``
baseline_encoder = model.encoder
baseline_encoder.embed_dim = "${model.embed_dim}"
baseline_encoder.num_levels = "${model.num_feature_levels}"

model._target_ = LiteHDETR
model.encoder = L(InterleavedEncoder)(
    num_blocks=3,  # B
    num_high_updates=2,  # A
    num_high_levels=3,  # H3L1
    embed_dim="${..embed_dim}",
    num_heads=8,
    num_levels="${..num_feature_levels}",
    num_points=4,
    feedforward_dim=2048,
    low_feedforward_dim=256,
    dropout=0.0,
    attention="key_aware",
    attention_dropout=0.0,
    separate_key_proj=False,
)
model.decoder.cross_attention = "key_aware"
