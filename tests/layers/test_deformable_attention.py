import math

import pytest
import torch

from lite_detr.layers import KeyAwareDeformableAttention, MultiScaleDeformableAttention
from lite_detr.layers.deformable_sampling import compute_sampling_locations

ATTENTIONS = [MultiScaleDeformableAttention, KeyAwareDeformableAttention]
SHAPES = [[6, 8], [3, 4], [2, 2]]


def _levels(shapes=SHAPES):
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64)
    areas = spatial_shapes.prod(1)
    level_start_index = torch.cat((areas.new_zeros(1), areas.cumsum(0)[:-1]))
    return spatial_shapes, level_start_index, int(areas.sum())


def _inputs(n=2, lq=5, c=32, ref_dim=2, shapes=SHAPES, seed=0):
    g = torch.Generator().manual_seed(seed)
    spatial_shapes, level_start_index, s = _levels(shapes)
    num_levels = len(shapes)
    ref = torch.rand(n, lq, num_levels, ref_dim, generator=g)
    if ref_dim == 4:
        ref[..., 2:] = ref[..., 2:] * 0.5 + 0.1
    return {
        "query": torch.randn(n, lq, c, generator=g),
        "value": torch.randn(n, s, c, generator=g),
        "reference_points": ref,
        "spatial_shapes": spatial_shapes,
        "level_start_index": level_start_index,
        "key_padding_mask": None,
        "query_pos": torch.randn(n, lq, c, generator=g),
    }


def _randomize(module, seed=1):
    """Random weights everywhere so that no path is hidden by a zero init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return module


@pytest.mark.parametrize("cls", ATTENTIONS)
@pytest.mark.parametrize("ref_dim", [2, 4])
def test_output_shape(cls, ref_dim):
    attn = cls(embed_dim=32, num_heads=4, num_levels=3, num_points=2)
    out = attn(**_inputs(ref_dim=ref_dim))
    assert out.shape == (2, 5, 32)
    assert torch.isfinite(out).all()


def test_parameters_of_each_kind():
    msda = MultiScaleDeformableAttention(embed_dim=32, num_heads=4, num_levels=3)
    kda = KeyAwareDeformableAttention(embed_dim=32, num_heads=4, num_levels=3)
    kda_sep = KeyAwareDeformableAttention(
        embed_dim=32, num_heads=4, num_levels=3, separate_key_proj=True
    )
    names = lambda m: {n.split(".")[0] for n, _ in m.named_parameters()}  # noqa: E731
    assert names(msda) == {"sampling_offsets", "attention_weights", "value_proj", "output_proj"}
    assert names(kda) == {"sampling_offsets", "query_proj", "value_proj", "output_proj"}
    assert names(kda_sep) == names(kda) | {"key_proj"}
    assert not hasattr(kda, "attention_weights")
    # 3 levels * 4 points * 4 heads * 2 coords
    assert msda.sampling_offsets.out_features == kda.sampling_offsets.out_features == 96


def test_deformable_detr_init():
    attn = MultiScaleDeformableAttention(embed_dim=32, num_heads=4, num_levels=2, num_points=3)
    assert torch.all(attn.sampling_offsets.weight == 0)
    assert torch.all(attn.attention_weights.weight == 0)
    bias = attn.sampling_offsets.bias.view(4, 2, 3, 2)
    # head 0 looks along +x, head 1 along +y; point p sits at distance p + 1 on every level
    assert torch.allclose(bias[0, :, :, 0], torch.tensor([1.0, 2.0, 3.0]).expand(2, 3))
    assert torch.allclose(bias[0, :, :, 1], torch.zeros(2, 3), atol=1e-6)
    assert torch.allclose(bias[1, :, :, 1], torch.tensor([1.0, 2.0, 3.0]).expand(2, 3))


def test_sampling_locations_2d_and_box():
    spatial_shapes = torch.tensor([[4, 8], [2, 4]])
    offsets = torch.zeros(1, 1, 1, 2, 2, 2)
    offsets[..., 0, :] = torch.tensor([8.0, 4.0])  # one level width/height in pixels
    ref = torch.tensor([0.25, 0.5]).expand(1, 1, 2, 2)
    loc = compute_sampling_locations(ref, offsets, spatial_shapes)
    # level 0 is 8 wide x 4 high: 8 px = 1.0 in x, 4 px = 1.0 in y
    assert torch.allclose(loc[0, 0, 0, 0, 0], torch.tensor([1.25, 1.5]))
    # level 1 is 4 wide x 2 high
    assert torch.allclose(loc[0, 0, 0, 1, 0], torch.tensor([2.25, 2.5]))
    assert torch.allclose(loc[0, 0, 0, :, 1], ref[0, 0])

    box = torch.tensor([0.5, 0.5, 0.2, 0.4]).expand(1, 1, 2, 4)
    # P = 2 points: an offset of P along x reaches the box's right edge
    loc = compute_sampling_locations(box, offsets.clone().fill_(2.0), spatial_shapes)
    assert torch.allclose(loc[0, 0, 0, 0, 0], torch.tensor([0.6, 0.7]))


@pytest.mark.parametrize("cls", ATTENTIONS)
def test_samples_exactly_at_pixel_centres(cls):
    """One level, one point, zero offset at a pixel centre: output = output_proj(value_proj(v))."""
    c = 16
    attn = _randomize(cls(embed_dim=c, num_heads=2, num_levels=1, num_points=1))
    with torch.no_grad():
        attn.sampling_offsets.weight.zero_()
        attn.sampling_offsets.bias.zero_()
    shapes = [[3, 5]]
    inputs = _inputs(n=1, lq=4, c=c, shapes=shapes)
    pix = torch.tensor([[0, 0], [2, 4], [1, 3], [2, 1]])  # (row, col)
    centres = torch.stack(((pix[:, 1] + 0.5) / 5, (pix[:, 0] + 0.5) / 3), -1)
    inputs["reference_points"] = centres.view(1, 4, 1, 2)
    out = attn(**inputs)
    v = inputs["value"][0, pix[:, 0] * 5 + pix[:, 1]]
    expected = attn.output_proj(attn.value_proj(v))
    torch.testing.assert_close(out[0], expected, rtol=1e-4, atol=1e-5)


def test_key_aware_weights_are_query_key_softmax():
    """Points on pixel centres: KDA = softmax(q.k/sqrt(d)) over points of the sampled values."""
    c, m, p = 16, 2, 3
    d = c // m
    attn = _randomize(
        KeyAwareDeformableAttention(embed_dim=c, num_heads=m, num_levels=1, num_points=p)
    )
    # offsets of 0, 1 and 2 pixels along x for every head, independent of the query
    bias = torch.zeros(m, 1, p, 2)
    bias[..., 0] = torch.arange(p, dtype=torch.float32)
    with torch.no_grad():
        attn.sampling_offsets.weight.zero_()
        attn.sampling_offsets.bias.copy_(bias.flatten())
    inputs = _inputs(n=1, lq=2, c=c, shapes=[[2, 4]])
    inputs["reference_points"] = torch.tensor([[0.5 / 4, 0.5 / 2], [1.5 / 4, 1.5 / 2]]).view(
        1, 2, 1, 2
    )
    out = attn(**inputs)

    v = attn.value_proj(inputs["value"][0]).view(8, m, d)
    q = attn.query_proj(inputs["query"][0] + inputs["query_pos"][0]).view(2, m, d)
    rows = []
    for i, start in enumerate([0, 5]):  # (row 0, col 0) and (row 1, col 1)
        vs = v[start : start + p]  # (P, M, D)
        w = torch.einsum("md,pmd->mp", q[i], vs).div(math.sqrt(d)).softmax(-1)
        rows.append(torch.einsum("mp,pmd->md", w, vs).reshape(c))
    expected = attn.output_proj(torch.stack(rows))
    torch.testing.assert_close(out[0], expected, rtol=1e-4, atol=1e-5)


def test_separate_key_proj_changes_output():
    torch.manual_seed(0)
    shared = _randomize(KeyAwareDeformableAttention(embed_dim=32, num_heads=4, num_levels=3))
    separate = KeyAwareDeformableAttention(
        embed_dim=32, num_heads=4, num_levels=3, separate_key_proj=True
    )
    separate.load_state_dict(shared.state_dict(), strict=False)
    inputs = _inputs()
    with torch.no_grad():
        # W_K = W_V reproduces the shared-projection module exactly
        separate.key_proj.load_state_dict(shared.value_proj.state_dict())
        torch.testing.assert_close(separate(**inputs), shared(**inputs))
        separate.key_proj.weight.add_(torch.randn_like(separate.key_proj.weight))
        assert not torch.allclose(separate(**inputs), shared(**inputs), atol=1e-3)


@pytest.mark.parametrize("cls", ATTENTIONS)
def test_padding_mask_zeroes_padded_values(cls):
    attn = _randomize(cls(embed_dim=32, num_heads=4, num_levels=3))
    inputs = _inputs()
    n, s, _ = inputs["value"].shape
    mask = torch.zeros(n, s, dtype=torch.bool)
    mask[:, 10:20] = True
    mask[:, -3:] = True
    inputs["key_padding_mask"] = mask
    perturbed = dict(inputs, value=inputs["value"] + 5.0 * mask[..., None])
    with torch.no_grad():
        torch.testing.assert_close(attn(**perturbed), attn(**inputs))
        # without the mask the same perturbation is visible
        unmasked = dict(inputs, key_padding_mask=None)
        perturbed_unmasked = dict(perturbed, key_padding_mask=None)
        assert not torch.allclose(attn(**perturbed_unmasked), attn(**unmasked), atol=1e-3)


@pytest.mark.parametrize("cls", ATTENTIONS)
def test_query_pos_is_added_to_query(cls):
    attn = _randomize(cls(embed_dim=32, num_heads=4, num_levels=3))
    inputs = _inputs()
    folded = dict(inputs, query=inputs["query"] + inputs["query_pos"], query_pos=None)
    with torch.no_grad():
        torch.testing.assert_close(attn(**inputs), attn(**folded))


@pytest.mark.parametrize("cls", ATTENTIONS)
@pytest.mark.parametrize("ref_dim", [2, 4])
def test_gradients_reach_every_parameter(cls, ref_dim):
    kwargs = {"separate_key_proj": True} if cls is KeyAwareDeformableAttention else {}
    attn = _randomize(cls(embed_dim=32, num_heads=4, num_levels=3, num_points=2, **kwargs))
    inputs = _inputs(ref_dim=ref_dim)
    inputs["value"].requires_grad_(True)
    inputs["query"].requires_grad_(True)
    out = attn(**inputs)
    (out * torch.randn_like(out)).sum().backward()
    for name, p in list(attn.named_parameters()) + [
        ("value", inputs["value"]),
        ("query", inputs["query"]),
    ]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("cls", ATTENTIONS)
def test_bad_constructor_arguments(cls):
    with pytest.raises(ValueError, match="divisible by num_heads"):
        cls(embed_dim=30, num_heads=4)
    with pytest.raises(ValueError, match="num_points"):
        cls(embed_dim=32, num_heads=4, num_points=0)


@pytest.mark.parametrize("cls", ATTENTIONS)
@pytest.mark.parametrize(
    "change, exc, match",
    [
        (lambda x: x.update(query=x["query"][..., :16]), ValueError, "query must be"),
        (lambda x: x.update(value=x["value"][:1]), ValueError, "value must be"),
        # the level tensors' dtype and values: the op's C++ boundary
        (
            lambda x: x.update(value=x["value"][:, :-1]),
            ValueError,
            r"sum of H\*W over spatial_shapes \[\[6, 8\], \[3, 4\], \[2, 2\]\] is 64 but value has "
            "S=63",
        ),
        (
            lambda x: x.update(spatial_shapes=x["spatial_shapes"].int()),
            TypeError,
            "spatial_shapes must have dtype torch.int64",
        ),
        (lambda x: x.update(spatial_shapes=x["spatial_shapes"][:2]), ValueError, "spatial_shapes"),
        (
            lambda x: x.update(level_start_index=x["level_start_index"].float()),
            TypeError,
            "level_start_index must have dtype torch.int64",
        ),
        (
            lambda x: x.update(reference_points=x["reference_points"][..., :1]),
            ValueError,
            "reference_points",
        ),
        (
            lambda x: x.update(reference_points=x["reference_points"][:, :, :2]),
            ValueError,
            "reference_points",
        ),
        (lambda x: x.update(query_pos=x["query_pos"][:, :2]), ValueError, "query_pos"),
        (
            lambda x: x.update(key_padding_mask=torch.zeros(2, 77)),
            ValueError,
            "key_padding_mask",
        ),
    ],
)
def test_bad_inputs_raise_clear_errors(cls, change, exc, match):
    attn = cls(embed_dim=32, num_heads=4, num_levels=3)
    inputs = _inputs()
    change(inputs)
    with pytest.raises(exc, match=match):
        attn(**inputs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("cls", ATTENTIONS)
def test_cuda_forward_does_not_synchronise(cls):
    """No device-to-host read per attention call on a GPU (the level checks need the host)."""
    attn = _randomize(cls(embed_dim=32, num_heads=4, num_levels=3, num_points=2)).cuda()
    inputs = {k: v.cuda() if torch.is_tensor(v) else v for k, v in _inputs().items()}
    attn(**inputs)  # warm-up: lazy initialisations may synchronise once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = attn(**inputs)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.shape == (2, 5, 32)
