import pytest

from lite_detr.layers import (
    ATTENTION_TYPES,
    KeyAwareDeformableAttention,
    MultiScaleDeformableAttention,
    build_deformable_attention,
)
from lite_detr.modeling.decoders import DeformableDecoder
from lite_detr.modeling.encoders import DeformableEncoder, InterleavedEncoder

SIZES = {"embed_dim": 32, "num_heads": 4, "num_levels": 2, "num_points": 2}


def test_one_registry_builds_every_attention():
    assert ATTENTION_TYPES == {
        "deformable": MultiScaleDeformableAttention,
        "key_aware": KeyAwareDeformableAttention,
    }
    kda = build_deformable_attention("key_aware", dropout=0.3, separate_key_proj=True, **SIZES)
    assert isinstance(kda, KeyAwareDeformableAttention) and kda.key_proj is not None
    assert kda.dropout.p == 0.3
    with pytest.raises(ValueError, match="MyEncoder: unknown attention 'dense'"):
        build_deformable_attention("dense", owner="MyEncoder", **SIZES)
    with pytest.raises(ValueError, match="separate_key_proj=True needs .*'deformable' has none"):
        build_deformable_attention("deformable", separate_key_proj=True, **SIZES)


def test_a_new_type_registered_once_is_accepted_by_encoders_and_decoders(monkeypatch):
    class MyAttention(MultiScaleDeformableAttention):
        pass

    monkeypatch.setitem(ATTENTION_TYPES, "mine", MyAttention)
    enc = DeformableEncoder(num_layers=1, attention="mine", **SIZES)
    lite = InterleavedEncoder(num_blocks=1, num_high_levels=1, attention="mine", **SIZES)
    dec = DeformableDecoder(num_classes=3, num_layers=1, cross_attention="mine", **SIZES)
    for module in (enc, lite, dec):
        assert any(isinstance(m, MyAttention) for m in module.modules())


@pytest.mark.parametrize("cls", [DeformableEncoder, InterleavedEncoder])
def test_encoder_attention_knobs(cls):
    sizes = dict(SIZES, num_levels=4)
    enc = cls(attention="key_aware", attention_dropout=0.2, separate_key_proj=True, **sizes)
    attns = [m for m in enc.modules() if isinstance(m, KeyAwareDeformableAttention)]
    assert attns and all(a.key_proj is not None and a.dropout.p == 0.2 for a in attns)
    with pytest.raises(ValueError, match=f"{cls.__name__}: separate_key_proj"):
        cls(attention="deformable", separate_key_proj=True, **sizes)
