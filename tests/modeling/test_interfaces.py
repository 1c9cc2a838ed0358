"""The encoder / decoder contracts are checked when a detector is built: a new encoder or
decoder that misses a piece fails with a message naming it."""

import pytest
import torch
from detectron2.config import instantiate
from torch import nn

from lite_detr.modeling.encoders import DeformableEncoder, InterleavedEncoder
from lite_detr.modeling.interfaces import check_decoder, check_encoder

from .meta_arch.conftest import tiny_cfg


class MyEncoder(nn.Module):
    """A complete third-party encoder (inherits from nothing of ours)."""

    embed_dim = 64
    num_levels = 4
    attention = "deformable"
    variant = "mine/deformable"

    def forward(
        self,
        query,
        query_pos,
        spatial_shapes,
        level_start_index,
        valid_ratios,
        key_padding_mask=None,
        spatial_sizes=None,
    ):
        return query + query_pos


class NoVariant(MyEncoder):
    variant = None  # e.g. a tag forgotten: the class attribute is there but not a string


class MissingVariant(nn.Module):
    embed_dim = 64
    num_levels = 4
    attention = "deformable"

    def forward(self, *args, **kwargs):
        return args[0]


class NoSpatialSizes(MyEncoder):
    def forward(self, query, query_pos, spatial_shapes, level_start_index, valid_ratios, mask=None):
        return query


def build_with_encoder(encoder):
    cfg = tiny_cfg("dino_r50")
    cfg.model.encoder = encoder
    return instantiate(cfg.model)


def test_our_encoders_and_decoder_follow_the_contracts():
    for encoder in (DeformableEncoder(embed_dim=64), InterleavedEncoder(embed_dim=64)):
        check_encoder("test", encoder)
    model = build_with_encoder(MyEncoder())
    assert model.variant_tag.tags["encoder"] == "mine/deformable"
    check_decoder("test", model.decoder)
    model.eval()
    with torch.no_grad():
        out = model([{"image": torch.rand(3, 64, 64) * 255}])
    assert len(out[0]["instances"]) == 30


@pytest.mark.parametrize(
    "encoder,message",
    [
        (MissingVariant(), r"MissingVariant .*MultiScaleEncoder: it has no `variant`"),
        (NoVariant(), r"`variant` \(the architecture tag stored in checkpoints\) must be a str"),
        (NoSpatialSizes(), r"`forward` must accept .*spatial_sizes"),
        (torch.nn.Identity(), r"Identity .*no `embed_dim`"),
    ],
)
def test_an_encoder_missing_a_piece_fails_at_construction(encoder, message):
    with pytest.raises(TypeError, match=message):
        build_with_encoder(encoder)


def test_a_decoder_missing_a_piece_fails_at_construction():
    cfg = tiny_cfg("dino_r50")
    decoder = instantiate(cfg.model.decoder)
    del decoder.cross_attention
    with pytest.raises(TypeError, match="no `cross_attention`"):
        check_decoder("DINO", decoder)
    cfg.model.encoder.num_levels = 3
    with pytest.raises(ValueError, match="num_feature_levels=4 but encoder.num_levels=3"):
        instantiate(cfg.model)
