"""DINO / Lite-DINO follow the authors' released code where it changes outputs or training:
position embedding, inverse_sigmoid clamp, query selection, post-processing, initialisation,
backbone freezing (weight decay: tests/test_configs.py::test_optimizer_param_groups)."""

import math

import pytest
import torch

from lite_detr.layers import KeyAwareDeformableAttention

from .conftest import tiny_cfg


def test_dino_configs_use_the_release_numerics():
    for name in ("dino_r50", "lite_dino_r50"):
        cfg = tiny_cfg(name).model
        assert cfg.position_embedding.offset == 0.0 and cfg.position_embedding.temperature == 20
        assert cfg.decoder.inverse_sigmoid_eps == 1e-3
        assert cfg.backbone.freeze_at == 2  # stem and res2
    # Deformable DETR (and H-DETR, built on it) keep their own release's values
    for name in ("deformable_detr_r50", "h_detr_r50"):
        cfg = tiny_cfg(name).model
        assert cfg.position_embedding.offset == -0.5
        assert cfg.decoder.inverse_sigmoid_eps == 1e-5


def test_stem_and_res2_are_frozen(build_tiny):
    model = build_tiny()
    trainable = {n.split(".")[0] for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert trainable == {"res3", "res4", "res5"}


def test_xavier_init_of_the_transformer_weights(build_tiny):
    model = build_tiny()
    q, c = model.tgt_embed.weight.shape
    bound = math.sqrt(6.0 / (q + c))
    # the content queries end Xavier-uniform (not normal): all within the Xavier bound, and
    # spread over it
    w = model.tgt_embed.weight
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    # Xavier-uniform: within its bound, and beyond PyTorch's default Linear bound 1/sqrt(fan_in)
    for w in (
        model.decoder.layers[0].ffn.linear1.weight,
        model.decoder.layers[0].self_attn.out_proj.weight,
        model.decoder.ref_point_head.layers[0].weight,
        model.encoder.layers[0].ffn.linear2.weight,
        model.enc_output.weight,
    ):
        assert 1 / math.sqrt(w.shape[1]) < w.abs().max() <= math.sqrt(6.0 / sum(w.shape))
    # the attention modules keep their own offset init after the Xavier pass
    for m in model.modules():
        if isinstance(m, KeyAwareDeformableAttention):
            assert (m.sampling_offsets.weight == 0).all()
            assert m.sampling_offsets.bias.abs().max() == m.num_points
    # the heads are not part of it: prior-probability class bias, zero box deltas
    assert torch.allclose(model.decoder.class_embed[0].bias, torch.full((3,), -math.log(99.0)))
    assert (model.decoder.bbox_embed[0].layers[-1].weight == 0).all()
    # the level embedding stays normal (it exceeds any Xavier bound of a (4, C) table)
    assert model.level_embeds.abs().max() > math.sqrt(6.0 / sum(model.level_embeds.shape))


def test_padding_proposals_compete_in_query_selection(build_tiny):
    """As the release: invalid (padding/border) proposals are not excluded from the top-k; one
    selected starts from the box (1, 1, 1, 1)."""
    model = build_tiny().eval()
    with torch.no_grad():
        # an invalid token's memory is zeroed, so its normed projection is LN(bias): the class
        # row equal to it scores invalid tokens highest (Cauchy-Schwarz)
        row = model.enc_output_norm(model.enc_output.bias)
        model.enc_class_embed.weight.copy_(row.expand(3, -1))
        model.enc_class_embed.bias.zero_()
        # the second image is padded to the first's size
        batch = [{"image": torch.rand(3, 64, 96) * 255}, {"image": torch.rand(3, 32, 48) * 255}]
        enc = model.encode(*model.extract_features(model.preprocess_image(batch)))
        ref_unsig, interm = model.select_proposals(enc)
    picked = torch.isinf(ref_unsig).all(-1)
    assert picked[1].all() and not picked[0].any()
    assert (interm["pred_boxes"][1] == 1.0).all()


def test_inverse_sigmoid_clamp_changes_border_boxes(build_tiny):
    """A reference box at the border: its logit is clamped at 1e-3 (the release) in the box
    refinement, not at 1e-5."""
    from lite_detr.modeling.box_ops import inverse_sigmoid

    ones = torch.ones(1, 4)
    assert torch.allclose(inverse_sigmoid(ones, 1e-3), torch.full((1, 4), math.log(1 / 1e-3)))
    model = build_tiny().eval()
    decoder = model.decoder
    n, q, c = 1, 4, decoder.embed_dim
    memory = torch.randn(n, 16 + 4 + 1 + 1, c)
    shapes = torch.tensor([[4, 4], [2, 2], [1, 1], [1, 1]])
    start = torch.tensor([0, 16, 20, 21])
    ratios = torch.ones(n, 4, 2)
    ref = torch.full((n, q, 4), float("inf"))  # a selected border proposal
    outs = []
    for eps in (1e-3, 1e-5):
        decoder.inverse_sigmoid_eps = eps
        with torch.no_grad():
            bbox = decoder.bbox_embed[0].layers[-1]
            bbox.bias.fill_(-8.0)  # pulls the box back from the border
            outs.append(decoder(torch.randn(n, q, c), ref, memory, shapes, start, ratios)[1])
    assert not torch.allclose(outs[0], outs[1])
    expected = torch.sigmoid(torch.tensor(math.log(1000) - 8.0))
    assert torch.allclose(outs[0][0], expected.expand_as(outs[0][0]))


@pytest.mark.parametrize("out_hw", [(96, 128), (200, 300)])
def test_postprocess_scales_without_clipping(build_tiny, out_hw):
    """Boxes are the normalised predictions times the output size: not clipped to the image and
    never dropped (as the release); 30 detections per image, as configured."""
    model = build_tiny().eval()
    with torch.no_grad():
        # large boxes centred near the corner: they extend beyond the image
        model.decoder.bbox_embed[0].layers[-1].bias.copy_(torch.tensor([-4.0, -4.0, 3.0, 3.0]))
        h, w = out_hw
        out = model([{"image": torch.rand(3, 96, 128) * 255, "height": h, "width": w}])
    inst = out[0]["instances"]
    assert len(inst) == 30 and inst.image_size == (h, w)
    boxes = inst.pred_boxes.tensor
    assert (boxes[:, :2] < 0).any()  # not clipped
