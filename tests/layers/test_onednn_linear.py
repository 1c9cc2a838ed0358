"""OneDNNLinear (a deployment variant of nn.Linear): a oneDNN 1x1 convolution at eager CPU
inference on many rows, the plain linear everywhere else."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lite_detr.layers import OneDNNLinear

needs_onednn = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN"
)


def _layer(in_features=32, out_features=96, seed=0):
    torch.manual_seed(seed)
    layer = OneDNNLinear(in_features, out_features)
    nn.init.normal_(layer.bias)  # a bias that is not zero, so that adding it is checked
    return layer


@pytest.fixture
def convolutions(monkeypatch):
    """The shapes of the convolutions that OneDNNLinear runs."""
    calls = []
    conv2d = F.conv2d

    def spy(x, weight, *args, **kwargs):
        calls.append((tuple(x.shape), tuple(weight.shape)))
        return conv2d(x, weight, *args, **kwargs)

    monkeypatch.setattr(F, "conv2d", spy)
    return calls


@needs_onednn
@pytest.mark.parametrize("shape", [(2048, 32), (2, 1500, 32), (1, 3, 700, 32)])
def test_cpu_inference_runs_a_1x1_convolution_with_the_linear_results(shape, convolutions):
    layer = _layer()
    x = torch.randn(shape)
    with torch.no_grad():
        out = layer(x)
    rows = x.numel() // 32
    assert convolutions == [((1, 32, 1, rows), (96, 32, 1, 1))]
    assert out.shape == (*shape[:-1], 96) and out.is_contiguous()
    torch.testing.assert_close(out, F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)


@needs_onednn
def test_input_that_is_not_row_major(convolutions):
    layer = _layer()
    x = torch.randn(32, 2048).t()  # (2048, 32) with transposed strides
    with torch.no_grad():
        out = layer(x)
    assert len(convolutions) == 1
    torch.testing.assert_close(out, F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)


def test_inference_mode_and_no_bias():
    layer = OneDNNLinear(32, 96, bias=False)
    x = torch.randn(3000, 32)
    with torch.inference_mode():
        out = layer(x)
    torch.testing.assert_close(out, x @ layer.weight.t(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["autograd", "few rows", "few outputs", "float64", "tracing"])
def test_everything_else_is_bitwise_f_linear(case, convolutions):
    """Training, small layers, other dtypes and traced graphs (FLOP counts, ONNX) run the plain
    linear."""
    layer = _layer(out_features=8 if case == "few outputs" else 96)
    x = torch.randn(1000 if case == "few rows" else 2048, 32)
    if case == "float64":
        layer, x = layer.double(), x.double()
    if case == "autograd":
        x.requires_grad_(True)
        out = layer(x)
        out.sum().backward()
        assert x.grad is not None and layer.weight.grad is not None
    elif case == "tracing":
        with torch.no_grad():
            traced = torch.jit.trace(layer, x, check_trace=False)
            out = traced(x)
        assert "aten::linear" in str(traced.graph) and "conv" not in str(traced.graph)
    else:
        with torch.no_grad():
            out = layer(x)
    assert convolutions == []
    assert torch.equal(out, F.linear(x, layer.weight, layer.bias))


def test_same_parameters_and_state_dict_as_nn_linear():
    layer = OneDNNLinear(16, 64)
    plain = nn.Linear(16, 64)
    assert isinstance(layer, nn.Linear)
    assert layer.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(4, 16)
    assert torch.equal(plain(x), layer(x))
