import pytest
import torch

from lite_detr.layers import FFN, Linear


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


@pytest.mark.parametrize("shape", [(1, 5000, 16), (2, 1300, 16), (2100, 16)])
def test_inference_in_token_chunks_gives_bitwise_the_same_output(shape, monkeypatch):
    """CPU inference on many tokens runs the FFN a chunk of tokens at a time (the hidden stays in
    the cache): the same sums row by row, so bitwise the same output as all at once (with the
    same GEMM for both: here MKL's, since oneDNN takes only the all-at-once rows)."""
    monkeypatch.setattr(Linear, "onednn_at_inference", False)
    torch.manual_seed(0)
    ffn = FFN(embed_dim=16, feedforward_dim=64).eval()
    ffn.inference_chunk = 512
    x = torch.randn(shape)
    with torch.no_grad():
        chunked = ffn(x)
        ffn.inference_chunk = 0
        whole = ffn(x)
    assert chunked.shape == whole.shape == x.shape
    assert torch.equal(chunked, whole)
