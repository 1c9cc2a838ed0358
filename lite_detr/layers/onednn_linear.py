"""
``nn.Linear`` that runs through oneDNN at CPU inference: a deployment variant, made from a
model's plain ``nn.Linear`` layers by :func:`lite_detr.deploy.optimize_for_cpu_inference`; the
modeling code builds plain ``nn.Linear``.

PyTorch computes a float32 linear on the CPU with MKL's GEMM. On the AMD CPUs of this project's
2-core test machines MKL runs its generic ("def ... zen") kernel, while oneDNN, which already
runs every convolution of the backbone, reaches its peak: a linear over many tokens written as a
1x1 convolution over channels-last features of height 1 (the same memory as the (tokens,
channels) matrix, so nothing is copied) takes 15-40% less time (benchmarks/README.md, "Linears
through oneDNN"). The encoder of an 800x1333 image applies ~30 linears to 5523-22223 tokens, and
the two-stage head 3 more.

Only the forward changes, and only in eager CPU inference; the results differ from MKL's by
float rounding (another summation order). Autograd, tracing (fvcore's FLOP counter),
scripting, ``torch.compile``, ONNX export and every other device run ``F.linear``, so exported
graphs and FLOP counts hold a plain linear.
"""

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["OneDNNLinear", "eager_cpu_inference"]


def eager_cpu_inference(x: torch.Tensor) -> bool:
    """Whether ``x`` is a CPU tensor in eager inference: no autograd, and no tracing, scripting,
    compiling or ONNX export, whose graphs must hold the plain operators."""
    return not (
        x.device.type != "cpu"
        or torch.is_grad_enabled()
        or torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.compiler.is_compiling()
        or torch.onnx.is_in_onnx_export()
    )


class OneDNNLinear(nn.Linear):
    """
    ``nn.Linear`` (same parameters, state dict and initialisation) whose eager CPU inference on
    at least :attr:`onednn_min_rows` float32 rows and :attr:`onednn_min_features` outputs runs
    as a oneDNN 1x1 convolution; smaller ones (the decoder's 900 queries, a 4-channel box
    output) are as fast or faster in MKL and stay there. Made from an existing ``nn.Linear`` by
    changing its class (:func:`lite_detr.deploy.optimize_for_cpu_inference`).
    """

    onednn_min_rows: int = 1024
    onednn_min_features: int = 64

    def _through_onednn(self, x: torch.Tensor) -> bool:
        return (
            eager_cpu_inference(x)  # first: a traced graph must not depend on the checks
            and x.dim() >= 2
            and x.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and self.out_features >= self.onednn_min_features
            and x.numel() >= self.onednn_min_rows * self.in_features
            and torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._through_onednn(x):
            return F.linear(x, self.weight, self.bias)
        rows = x.numel() // self.in_features
        # (rows, C) row-major is a (1, C, 1, rows) channels-last feature map: a view, no copy
        # (reshape copies only an input that is not row-major already)
        features = x.reshape(1, 1, rows, self.in_features).permute(0, 3, 1, 2)
        out = F.conv2d(features, self.weight[:, :, None, None], self.bias)
        # the output is channels-last too, i.e. the (rows, out_features) matrix
        return out.permute(0, 2, 3, 1).reshape(*x.shape[:-1], self.out_features)
