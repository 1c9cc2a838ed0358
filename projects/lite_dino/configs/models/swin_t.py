"""Swin-T backbone of DINO / Lite-DINO Swin-T and the neck inputs it gives: stages 1-3 (strides 8,
16, 32; 192, 384, 768 channels), each through its own LayerNorm; the fourth level is the neck's
stride-2 conv, as with ResNet-50.

``models/dino_swin_t.py`` and ``models/lite_dino_swin_t.py`` put these two nodes into the R50
models; nothing else changes.
"""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from lite_detr.modeling import SwinTransformer

backbone = L(SwinTransformer)(
    embed_dim=96,
    depths=[2, 2, 6, 2],
    num_heads=[3, 6, 12, 24],
    window_size=7,
    patch_size=4,
    drop_path_rate=0.2,  # stochastic depth of DINO / Lite-DINO Swin-T
    out_features=["res3", "res4", "res5"],
    # the authors' release checkpoints every block to save memory (same results, ~1/3 more
    # backbone compute per step); off here, turn it on with model.backbone.use_checkpoint=True
    use_checkpoint=False,
)

# restate when changing the backbone's embed_dim (channels 2, 4, 8 x embed_dim)
neck_input_shapes = {
    "res3": L(ShapeSpec)(channels=192, stride=8),
    "res4": L(ShapeSpec)(channels=384, stride=16),
    "res5": L(ShapeSpec)(channels=768, stride=32),
}
