import pytest
import torch

from lite_detr.layers import FFN, TokenChunkedFFN


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
    """TokenChunkedFFN runs CPU inference on many tokens a chunk of tokens at a time (the hidden
    stays in the cache): the same sums row by row, so bitwise FFN's output (with the same GEMM
    for both: the plain nn.Linear's)."""
    monkeypatch.setattr(TokenChunkedFFN, "chunk", 512)
    torch.manual_seed(0)
    ffn = FFN(embed_dim=16, feedforward_dim=64).eval()
    x = torch.randn(shape)
    calls = []
    ffn.linear1.register_forward_hook(lambda m, i, o: calls.append(o.shape[:-1].numel()))
    with torch.no_grad():
        whole = ffn(x)
        ffn.__class__ = TokenChunkedFFN
        chunked = ffn(x)
    rows = x.numel() // 16
    assert calls == [rows, *[min(512, rows - i) for i in range(0, rows, 512)]]
    assert chunked.shape == whole.shape == x.shape
    assert torch.equal(chunked, whole)


def test_token_chunks_only_without_autograd(monkeypatch):
    """With autograd (training) TokenChunkedFFN is FFN: all tokens at once."""
    monkeypatch.setattr(TokenChunkedFFN, "chunk", 512)
    ffn = TokenChunkedFFN(embed_dim=16, feedforward_dim=64)
    calls = []
    ffn.linear1.register_forward_hook(lambda m, i, o: calls.append(o.shape[:-1].numel()))
    ffn(torch.randn(2100, 16, requires_grad=True)).sum().backward()
    assert calls == [2100] and ffn.linear1.weight.grad is not None
