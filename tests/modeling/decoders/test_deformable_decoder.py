import pytest
import torch

from lite_detr.modeling.decoders import DeformableDecoder
from lite_detr.modeling.denoising import build_dn_attn_mask

C, L = 32, 2


def memory_inputs(n=2):
    shapes = torch.tensor([[6, 8], [3, 4]])
    start = torch.tensor([0, 48])
    memory = torch.randn(n, 60, C)
    valid_ratios = torch.ones(n, L, 2)
    valid_ratios[1] = torch.tensor([0.75, 1.0])
    mask = torch.zeros(n, 60, dtype=torch.bool)
    mask[1, :48] = torch.arange(8).repeat(6) >= 6  # image 1: 6 of 8 columns valid
    mask[1, 48:] = torch.arange(4).repeat(3) >= 3
    return memory, shapes, start, valid_ratios, mask


def make_decoder(**kwargs):
    args = {
        "num_classes": 3,
        "num_layers": 2,
        "embed_dim": C,
        "num_heads": 4,
        "num_levels": L,
        "feedforward_dim": 64,
    }
    args.update(kwargs)
    return DeformableDecoder(**args)


@pytest.mark.parametrize("cross_attention", ["deformable", "key_aware"])
def test_decoder_shapes_and_heads(cross_attention):
    torch.manual_seed(0)
    dec = make_decoder(cross_attention=cross_attention)
    memory, shapes, start, ratios, mask = memory_inputs()
    logits, boxes = dec(
        torch.randn(2, 5, C), torch.randn(2, 5, 4), memory, shapes, start, ratios, mask
    )
    assert logits.shape == (2, 2, 5, 3) and boxes.shape == (2, 2, 5, 4)
    assert ((boxes > 0) & (boxes < 1)).all()
    assert dec.class_embed[0] is dec.class_embed[1]  # shared heads, as DINO's release
    assert (
        make_decoder(share_heads=False).class_embed[0]
        is not make_decoder(share_heads=False).class_embed[1]
    )
    # prior probability 0.01 at init and zero box deltas: layer 0 returns the reference boxes
    ref = torch.randn(2, 5, 4)
    _, boxes = dec(torch.randn(2, 5, C), ref, memory, shapes, start, ratios, mask)
    assert torch.allclose(boxes[0], ref.sigmoid(), atol=1e-5)


def test_attention_mask_keeps_matching_queries_independent_of_dn_queries():
    torch.manual_seed(0)
    dec = make_decoder().eval()
    for p in dec.parameters():  # non-trivial heads so that boxes depend on the queries
        p.data.add_(torch.randn_like(p) * 0.05)
    memory, shapes, start, ratios, mask = memory_inputs()
    groups, size, q = 2, 3, 4
    attn_mask = build_dn_attn_mask(groups, size, q)
    query, ref = torch.randn(2, groups * size + q, C), torch.randn(2, groups * size + q, 4)
    logits, boxes = dec(query, ref, memory, shapes, start, ratios, mask, attn_mask)
    query2, ref2 = query.clone(), ref.clone()
    query2[:, : groups * size] = torch.randn(2, groups * size, C) * 3
    ref2[:, : groups * size] = torch.randn(2, groups * size, 4)
    logits2, boxes2 = dec(query2, ref2, memory, shapes, start, ratios, mask, attn_mask)
    pad = groups * size
    assert torch.allclose(logits[:, :, pad:], logits2[:, :, pad:], atol=1e-5)
    assert torch.allclose(boxes[:, :, pad:], boxes2[:, :, pad:], atol=1e-5)
    assert not torch.allclose(logits[:, :, :pad], logits2[:, :, :pad])
    # changing group 1 leaves group 0 unchanged
    query3 = query.clone()
    query3[:, size:pad] += 1.0
    logits3, _ = dec(query3, ref, memory, shapes, start, ratios, mask, attn_mask)
    assert torch.allclose(logits[:, :, :size], logits3[:, :, :size], atol=1e-5)
    assert not torch.allclose(logits[:, :, size:pad], logits3[:, :, size:pad])
    # without the mask the matching queries do see the dn queries
    logits4, _ = dec(query2, ref2, memory, shapes, start, ratios, mask, None)
    logits5, _ = dec(query, ref, memory, shapes, start, ratios, mask, None)
    assert not torch.allclose(logits4[:, :, pad:], logits5[:, :, pad:])


@pytest.mark.parametrize("look_forward_twice", [True, False])
def test_look_forward_twice_gradient_path(look_forward_twice):
    """Layer 1's box loss reaches layer 0's box head only with look-forward-twice."""
    torch.manual_seed(0)
    dec = make_decoder(look_forward_twice=look_forward_twice, share_heads=False)
    memory, shapes, start, ratios, mask = memory_inputs()
    _, boxes = dec(torch.randn(2, 5, C), torch.randn(2, 5, 4), memory, shapes, start, ratios, mask)
    boxes[1].sum().backward()
    grad = dec.bbox_embed[0].layers[-1].weight.grad
    assert (grad is not None and grad.abs().sum() > 0) == look_forward_twice


def test_positional_queries_from_the_input_and_no_final_norm():
    """Deformable DETR's decoder: the given positional queries serve every layer (no
    ref_point_head), the heads read the layer output itself (no final LayerNorm)."""
    memory, shapes, start, ratios, mask = memory_inputs()
    torch.manual_seed(0)
    decoder = make_decoder(positional_queries="input", final_norm=False).eval()
    assert not hasattr(decoder, "ref_point_head") and decoder.norm is None
    names = {n.split(".")[0] for n, _ in decoder.named_parameters()}
    assert names == {"layers", "class_embed", "bbox_embed"}
    query, ref = torch.randn(2, 5, C), torch.randn(2, 5, 4)
    pos = torch.randn(2, 5, C)
    seen = []
    decoder.layers[1].register_forward_hook(lambda m, args, out: seen.append((args[1], out)))
    logits, boxes = decoder(query, ref, memory, shapes, start, ratios, mask, query_pos=pos)
    layer_pos, layer_out = seen[0]
    assert layer_pos is pos  # the same positional queries in the second layer
    assert torch.allclose(logits[1], decoder.class_embed[1](layer_out))
    other = decoder(query, ref, memory, shapes, start, ratios, mask, query_pos=pos + 1)[0]
    assert not torch.allclose(other, logits)
    with pytest.raises(ValueError, match="needs query_pos"):
        decoder(query, ref, memory, shapes, start, ratios, mask)
    with pytest.raises(ValueError, match="takes no query_pos"):
        make_decoder()(query, ref, memory, shapes, start, ratios, mask, query_pos=pos)
    with pytest.raises(ValueError, match="positional_queries"):
        make_decoder(positional_queries="learned")


def test_attention_options_reach_the_cross_attention():
    decoder = make_decoder(
        cross_attention="key_aware", separate_key_proj=True, attention_dropout=0.25
    )
    attn = decoder.layers[0].cross_attn
    assert attn.key_proj is not None and attn.dropout.p == 0.25
    with pytest.raises(ValueError, match="separate_key_proj"):
        make_decoder(cross_attention="deformable", separate_key_proj=True)


def test_decoder_errors():
    with pytest.raises(ValueError, match="cross_attention"):
        make_decoder(cross_attention="dense")
    with pytest.raises(ValueError, match="num_layers"):
        make_decoder(num_layers=0)
    memory, shapes, start, ratios, mask = memory_inputs()
    with pytest.raises(ValueError, match="reference boxes"):
        make_decoder()(
            torch.randn(2, 5, C), torch.randn(2, 4, 4), memory, shapes, start, ratios, mask
        )
