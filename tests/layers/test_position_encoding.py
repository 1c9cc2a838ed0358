import math

import pytest
import torch

from lite_detr.layers import PositionEmbeddingSine, box_sine_embedding


def test_shape_and_channel_layout():
    pe = PositionEmbeddingSine(num_pos_feats=16)
    mask = torch.zeros(2, 3, 5, dtype=torch.bool)
    pos = pe(mask)
    assert pos.shape == (2, 32, 3, 5) and pos.dtype == torch.float32
    # channel 0 of each half is sin(coordinate), channel 1 cos(coordinate): y half first
    x = (torch.arange(5) + 1 - 0.5) / (5 + 1e-6) * 2 * math.pi
    y = (torch.arange(3) + 1 - 0.5) / (3 + 1e-6) * 2 * math.pi
    torch.testing.assert_close(pos[0, 16], x.sin().expand(3, 5))
    torch.testing.assert_close(pos[0, 17], x.cos().expand(3, 5))
    torch.testing.assert_close(pos[0, 0], y[:, None].sin().expand(3, 5))
    # the last channel pair uses wavelength temperature ** ((num_pos_feats - 2) / num_pos_feats)
    torch.testing.assert_close(pos[0, 31], (x / 10000 ** (14 / 16)).cos().expand(3, 5))


def test_padding_does_not_change_the_valid_region():
    pe = PositionEmbeddingSine(num_pos_feats=8)
    small = pe(torch.zeros(1, 4, 6, dtype=torch.bool))
    mask = torch.ones(1, 7, 9, dtype=torch.bool)
    mask[:, :4, :6] = False
    padded = pe(mask)
    torch.testing.assert_close(padded[:, :, :4, :6], small)


def test_unnormalized_uses_pixel_index():
    pe = PositionEmbeddingSine(num_pos_feats=4, normalize=False)
    pos = pe(torch.zeros(1, 2, 3, dtype=torch.bool))
    torch.testing.assert_close(pos[0, 4, 0], torch.tensor([1.0, 2.0, 3.0]).sin())


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_pos_feats"):
        PositionEmbeddingSine(num_pos_feats=7)
    with pytest.raises(ValueError, match="mask"):
        PositionEmbeddingSine()(torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="mask"):
        PositionEmbeddingSine()(torch.zeros(4, 4, dtype=torch.bool))


def test_box_sine_embedding():
    boxes = torch.rand(2, 3, 4)
    emb = box_sine_embedding(boxes, 16)
    assert emb.shape == (2, 3, 64)
    # y first, then x: the first feature is sin(2*pi*y)
    assert torch.allclose(emb[..., 0], torch.sin(boxes[..., 1] * 2 * torch.pi), atol=1e-5)
    assert torch.allclose(emb[..., 16], torch.sin(boxes[..., 0] * 2 * torch.pi), atol=1e-5)
