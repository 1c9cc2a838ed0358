import pytest
import torch

from lite_detr.layers import FFN


@pytest.mark.parametrize(
    "activation, fn", [("relu", torch.relu), ("gelu", torch.nn.functional.gelu)]
)
def test_ffn_is_linear_act_linear(activation, fn):
    ffn = FFN(embed_dim=8, feedforward_dim=24, activation=activation)
    x = torch.randn(2, 5, 8)
    expected = ffn.linear2(fn(ffn.linear1(x)))
    torch.testing.assert_close(ffn(x), expected)
    assert ffn(x).shape == (2, 5, 8)


def test_ffn_dropout_is_active_in_training_only():
    ffn = FFN(embed_dim=8, feedforward_dim=64, dropout=0.5)
    x = torch.randn(4, 8)
    ffn.eval()
    torch.testing.assert_close(ffn(x), ffn(x))
    ffn.train()
    assert not torch.allclose(ffn(x), ffn(x))


def test_ffn_bad_arguments():
    with pytest.raises(ValueError, match="activation"):
        FFN(activation="tanhh")
    with pytest.raises(ValueError, match="feedforward_dim"):
        FFN(feedforward_dim=0)
