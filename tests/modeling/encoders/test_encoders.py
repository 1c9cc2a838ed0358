import inspect

import pytest
import torch

from lite_detr.modeling.encoders import (
    DeformableEncoder,
    DeformableEncoderLayer,
    InterleavedEncoder,
    JointEncoderLayer,
    get_reference_points,
)

C = 32
SHAPES = [[8, 12], [4, 6], [2, 3], [1, 2]]  # fine-to-coarse, strides 8..64 of a 64x96 image
SMALL = {"embed_dim": C, "num_heads": 2, "num_points": 2, "feedforward_dim": 64}


def _inputs(n=2, shapes=SHAPES, padded=True, seed=0):
    """Encoder inputs; image 1 is padded to 3/4 of the width when ``padded``."""
    g = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64)
    areas = spatial_shapes.prod(1)
    level_start_index = torch.cat((areas.new_zeros(1), areas.cumsum(0)[:-1]))
    s = int(areas.sum())
    masks = []
    for h, w in shapes:
        m = torch.zeros(n, h, w, dtype=torch.bool)
        if padded:
            m[1, :, w - w // 4 :] = True
        masks.append(m.flatten(1))
    mask = torch.cat(masks, 1)
    valid_w = torch.stack(
        [(~m.view(n, h, w)[:, 0]).sum(-1) / w for m, (h, w) in zip(masks, shapes)], 1
    )
    valid_ratios = torch.stack((valid_w, torch.ones_like(valid_w)), -1).float()
    return {
        "query": torch.randn(n, s, C, generator=g),
        "query_pos": torch.randn(n, s, C, generator=g),
        "spatial_shapes": spatial_shapes,
        "level_start_index": level_start_index,
        "valid_ratios": valid_ratios,
        "key_padding_mask": mask,
    }


def _num_low(inputs, num_high_levels):
    return int(inputs["level_start_index"][len(SHAPES) - num_high_levels])


ENCODERS = [
    lambda: DeformableEncoder(num_layers=2, **SMALL),
    lambda: DeformableEncoder(num_layers=1, attention="key_aware", **SMALL),
    lambda: InterleavedEncoder(num_blocks=2, num_high_updates=2, low_feedforward_dim=16, **SMALL),
    lambda: InterleavedEncoder(num_blocks=1, num_high_updates=2, attention="deformable", **SMALL),
]


@pytest.mark.parametrize("build", ENCODERS)
def test_shapes_and_padding_independence(build):
    """Memory keeps the input shape; padded tokens never influence valid ones (all layers)."""
    torch.manual_seed(0)
    encoder = build().eval()
    inputs = _inputs()
    with torch.no_grad():
        out = encoder(**inputs)
        assert out.shape == inputs["query"].shape and torch.isfinite(out).all()
        pad = inputs["key_padding_mask"][..., None]
        # random per channel: a constant shift would vanish in LayerNorm
        noise = torch.randn(inputs["query"].shape, generator=torch.Generator().manual_seed(1))
        noisy = dict(
            inputs, query=inputs["query"] + noise * pad, query_pos=inputs["query_pos"] + noise * pad
        )
        out_noisy = encoder(**noisy)
    valid = ~inputs["key_padding_mask"]
    torch.testing.assert_close(out_noisy[valid], out[valid], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(out_noisy[~valid], out[~valid], atol=1e-3)


def test_drop_in_replacements():
    assert inspect.signature(DeformableEncoder.forward) == inspect.signature(
        InterleavedEncoder.forward
    )
    inputs = _inputs()
    outs = [build()(**inputs) for build in ENCODERS]
    assert len({tuple(o.shape) for o in outs}) == 1


def test_reference_points():
    inputs = _inputs()
    ref = get_reference_points(inputs["spatial_shapes"], inputs["valid_ratios"])
    assert ref.shape == (2, 128, 4, 2)
    # first token of level 0 sits at the centre of pixel (0, 0); image 0 is unpadded
    torch.testing.assert_close(ref[0, 0, 0], torch.tensor([0.5 / 12, 0.5 / 8]))
    # the same normalised point on every level for unpadded images
    torch.testing.assert_close(ref[0, :, 0], ref[0, :, 3])
    # image 1: valid width 9/12 on level 0, so x spans the valid region only
    torch.testing.assert_close(ref[1, 8, 0, 0], torch.tensor(8.5 / 9 * 0.75))


def _record_layers(encoder):
    """Record, per layer call, its class and the query/value/reference tensors it receives."""
    calls = []

    def hook(module, args, kwargs):
        calls.append(dict(module=module, **dict(kwargs.items())))

    handles = [layer.register_forward_pre_hook(hook, with_kwargs=True) for layer in encoder.layers]
    return calls, handles


@pytest.mark.parametrize(
    "blocks, updates, high_levels",
    [(3, 2, 3), (2, 3, 3), (1, 6, 3), (3, 2, 2), (2, 1, 3), (1, 1, 1), (2, 2, 1)],
)
def test_interleaved_semantics(blocks, updates, high_levels):
    """Section 4 of docs/model.md: A*B layers, A-1 high-only then one joint layer per block."""
    torch.manual_seed(0)
    encoder = InterleavedEncoder(
        num_blocks=blocks,
        num_high_updates=updates,
        num_high_levels=high_levels,
        low_feedforward_dim=16,
        **SMALL,
    )
    assert encoder.num_layers == blocks * updates == len(encoder.layers)
    inputs = _inputs()
    s = inputs["query"].shape[1]
    num_low = _num_low(inputs, high_levels)
    ref = get_reference_points(inputs["spatial_shapes"], inputs["valid_ratios"])

    calls, handles = _record_layers(encoder)
    # the light FFN sees F_L only, the wide FFN of a joint layer F_H only
    ffn_inputs = []
    for layer in encoder.layers:
        if isinstance(layer, JointEncoderLayer):
            for name in ("low_ffn", "ffn"):
                getattr(layer, name).register_forward_pre_hook(
                    lambda m, a, name=name: ffn_inputs.append((name, a[0].shape[1]))
                )
    with torch.no_grad():
        out = encoder(**inputs)
    for h in handles:
        h.remove()

    assert len(calls) == blocks * updates
    for i, call in enumerate(calls):
        joint = (i + 1) % updates == 0
        assert isinstance(call["module"], JointEncoderLayer) == joint
        # keys/values are always all tokens of all scales
        assert call["value"].shape[1] == s
        if joint:
            assert call["query"] is call["value"] and call["num_low_tokens"] == num_low
            torch.testing.assert_close(call["reference_points"], ref)
        else:
            # high-only: the queries are F_H, the suffix of the (fine-to-coarse) value tokens
            assert call["query"].shape[1] == s - num_low
            torch.testing.assert_close(call["query"], call["value"][:, num_low:])
            torch.testing.assert_close(call["query_pos"], inputs["query_pos"][:, num_low:])
            torch.testing.assert_close(call["reference_points"], ref[:, num_low:])
    assert ffn_inputs == [("low_ffn", num_low), ("ffn", s - num_low)] * blocks

    # token states seen between layers: F_L changes only across joint layers (B times),
    # F_H across every layer (A*B times)
    states = [c["value"] for c in calls] + [out]
    low_changes = [
        i
        for i in range(len(calls))
        if not torch.equal(states[i][:, :num_low], states[i + 1][:, :num_low])
    ]
    high_changes = [
        i
        for i in range(len(calls))
        if not torch.equal(states[i][:, num_low:], states[i + 1][:, num_low:])
    ]
    assert low_changes == [b * updates + updates - 1 for b in range(blocks)]
    assert high_changes == list(range(blocks * updates))
    torch.testing.assert_close(states[0], inputs["query"])


def test_high_only_layer_output_ignores_nothing_but_low_queries():
    """In a high-only layer F_L still feeds the keys/values: changing it changes F_H."""
    torch.manual_seed(0)
    encoder = InterleavedEncoder(num_blocks=1, num_high_updates=2, **SMALL).eval()
    high_layer = encoder.layers[0]
    assert type(high_layer) is DeformableEncoderLayer
    inputs = _inputs(padded=False)
    num_low = _num_low(inputs, 3)
    calls, handles = _record_layers(encoder)
    with torch.no_grad():
        encoder(**inputs)
        c = calls[0]
        args = {k: v for k, v in c.items() if k != "module"}
        base = high_layer(**args)
        value = c["value"].clone()
        value[:, :num_low] += 1.0
        changed = high_layer(**dict(args, value=value))
    for h in handles:
        h.remove()
    assert not torch.allclose(base, changed, atol=1e-4)


def test_variants_and_layer_counts():
    assert InterleavedEncoder().variant == "H3L1-(2+1)x3/key_aware"
    assert InterleavedEncoder(**SMALL).num_layers == 6
    enc = InterleavedEncoder(num_blocks=1, num_high_updates=6, attention="deformable", **SMALL)
    assert (enc.variant, enc.num_layers) == ("H3L1-(6+1)x1/deformable", 6)
    enc = InterleavedEncoder(num_high_levels=2, **SMALL)
    assert enc.variant == "H2L2-(2+1)x3/key_aware"
    assert DeformableEncoder(**SMALL).variant == "deformable6/deformable"
    assert DeformableEncoder(num_layers=3, attention="key_aware", **SMALL).variant == (
        "deformable3/key_aware"
    )
    # the joint layers carry the light FFN with its own norm
    enc = InterleavedEncoder(low_feedforward_dim=16, **SMALL)
    joint = [layer for layer in enc.layers if isinstance(layer, JointEncoderLayer)]
    assert len(joint) == 3
    assert joint[0].low_ffn.feedforward_dim == 16 and joint[0].ffn.feedforward_dim == 64
    assert joint[0].low_norm is not joint[0].norm2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_high_levels": 0}, "num_high_levels"),
        ({"num_high_levels": 4}, "num_high_levels"),
        ({"num_high_updates": 0}, "num_high_updates"),
        ({"num_blocks": 0}, "num_blocks"),
        ({"attention": "softmax"}, "attention"),
        ({"embed_dim": 30, "num_heads": 4}, "divisible"),
    ],
)
def test_interleaved_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        InterleavedEncoder(**{**SMALL, **kwargs})


def test_deformable_bad_arguments():
    with pytest.raises(ValueError, match="num_layers"):
        DeformableEncoder(num_layers=0, **SMALL)
    with pytest.raises(ValueError, match="attention"):
        DeformableEncoder(attention="kda", **SMALL)


@pytest.mark.parametrize(
    "change, exc, match",
    [
        (lambda x: x.update(query=x["query"][..., :16]), ValueError, "query must be"),
        (lambda x: x.update(query_pos=x["query_pos"][:, 1:]), ValueError, "query_pos"),
        (lambda x: x.update(spatial_shapes=x["spatial_shapes"][:3]), ValueError, "spatial_shapes"),
        # the level tensors' dtype: the op's C++ boundary
        (
            lambda x: x.update(level_start_index=x["level_start_index"].int()),
            TypeError,
            "level_start_index must have dtype torch.int64",
        ),
        (lambda x: x.update(valid_ratios=x["valid_ratios"][:, :3]), ValueError, "valid_ratios"),
        (
            lambda x: x.update(key_padding_mask=x["key_padding_mask"].float()),
            ValueError,
            "key_padding_mask",
        ),
        (
            lambda x: x.update(
                query=x["query"][:, 1:], query_pos=x["query_pos"][:, 1:], key_padding_mask=None
            ),
            ValueError,
            "sum to",
        ),
    ],
)
@pytest.mark.parametrize("cls", [DeformableEncoder, InterleavedEncoder])
def test_encoder_bad_inputs(cls, change, exc, match):
    encoder = cls(**SMALL)
    inputs = _inputs()
    change(inputs)
    with pytest.raises(exc, match=match):
        encoder(**inputs)
