"""BatchNorm folded into the preceding convolution at inference, for detectron2 backbones: a
deployment step (:func:`lite_detr.deploy.optimize_for_cpu_inference` applies it); the detectors
build plain detectron2 ``Conv2d`` + BatchNorm.

A conv followed by an inference-mode BatchNorm is one affine map per output channel:
``BN(conv(x, W) + b) = conv(x, W * s) + (b - mean) * s + beta`` with
``s = gamma / sqrt(var + eps)``. Folding drops the BatchNorm pass over every feature map (the
backbone's largest tensors), and the folded weights are laid out channels-last, which makes
oneDNN run the convolutions without reordering their inputs and outputs (2-4x on the stride-4
1x1 convs of a ResNet on a CPU).

Only the forward changes: the modules keep their parameters and buffers (state dict, checkpoints
and optimizer groups are those of the unfolded model). Training runs the original conv + norm, and
so does a BatchNorm that uses batch statistics.
"""

import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from torch import nn

__all__ = ["BatchNormFoldedConv2d", "fold_batchnorm_at_inference", "folded_conv_parameters"]


def _uses_running_stats(norm: nn.Module) -> bool:
    """Whether ``norm`` is a per-channel affine map of fixed statistics in this mode."""
    if isinstance(norm, FrozenBatchNorm2d):
        return True
    if isinstance(norm, nn.modules.batchnorm._BatchNorm):
        # eval mode normalises with the running statistics unless there are none
        return not norm.training and norm.running_mean is not None
    return False


def folded_conv_parameters(
    conv: nn.Conv2d, norm: nn.Module, channels_last: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Weight and bias of the single convolution equal to ``norm(conv(x))``.

    Args:
        conv (nn.Conv2d): weight (O, I, kh, kw), optional bias (O,).
        norm: ``FrozenBatchNorm2d`` or an eval-mode ``BatchNorm2d`` of O channels.
        channels_last (bool): return the weight in ``torch.channels_last`` memory format.

    Returns:
        weight (O, I, kh, kw) and bias (O,), differentiable functions of the originals.
    """
    weight = conv.weight
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if norm.weight is not None:  # BatchNorm2d(affine=False) has no gamma, beta
        scale = norm.weight * scale
    shift = -norm.running_mean * scale
    if norm.bias is not None:
        shift = shift + norm.bias
    if conv.bias is not None:
        shift = shift + conv.bias * scale
    if channels_last:
        weight = weight.contiguous(memory_format=torch.channels_last)
    # the product keeps the memory format of ``weight``
    return weight * scale.to(weight.dtype).view(-1, 1, 1, 1), shift.to(weight.dtype)


class BatchNormFoldedConv2d(Conv2d):
    """
    detectron2's ``Conv2d`` (conv -> norm -> activation) whose norm is folded into the conv at
    inference (:func:`folded_conv_parameters`). In training mode, or with a norm that is not a
    fixed affine map (batch statistics, GroupNorm, ...), it is the plain detectron2 ``Conv2d``.

    Without autograd (``torch.no_grad`` / ``inference_mode``) the folded weight is cached and
    reused while the conv's and the norm's tensors are the same ones at the same version, i.e.
    until an optimizer step, ``load_state_dict``, ``.to()`` or any in-place change; with autograd,
    or while tracing / compiling / exporting, it is recomputed each call (so gradients reach the
    original parameters, and graphs hold the folding). The cache is a plain attribute, never in
    the state dict.

    Made by :func:`fold_batchnorm_at_inference` from existing modules, which sets the two
    switches: ``fold`` (False: always the plain ``Conv2d``) and ``channels_last`` (the folded
    weight's memory format, which the conv output follows).
    """

    fold: bool = True
    channels_last: bool = True
    _folded_cache: tuple | None = None

    def _sources(self) -> tuple:
        norm = self.norm
        return tuple(
            t
            for t in (
                self.weight,
                self.bias,
                norm.weight,
                norm.bias,
                norm.running_mean,
                norm.running_var,
            )
            if t is not None
        )

    def _folded_parameters(self) -> tuple[torch.Tensor, torch.Tensor]:
        if (
            torch.is_grad_enabled()
            or torch.jit.is_tracing()
            or torch.compiler.is_compiling()
            or any(t.is_inference() for t in self._sources())  # no version counter
        ):
            return folded_conv_parameters(self, self.norm, self.channels_last)
        sources = self._sources()
        key = (self.channels_last, self.norm.eps, tuple((t._version, t.shape) for t in sources))
        cache = self._folded_cache
        # the cache holds the source tensors, so their storage cannot be reused by new ones
        if (
            cache is not None
            and cache[0] == key
            and len(cache[1]) == len(sources)
            and all(a.data_ptr() == b.data_ptr() for a, b in zip(cache[1], sources))
        ):
            return cache[2]
        folded = folded_conv_parameters(self, self.norm, self.channels_last)
        self._folded_cache = (key, tuple(t.detach() for t in sources), folded)
        return folded

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or not self.fold or not _uses_running_stats(self.norm):
            return super().forward(x)
        weight, bias = self._folded_parameters()
        x = F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        if self.activation is not None:
            x = self.activation(x)
        return x


def fold_batchnorm_at_inference(
    module: nn.Module, fold: bool = True, channels_last: bool = True
) -> int:
    """
    Make every detectron2 ``Conv2d`` in ``module`` whose norm is a BatchNorm (frozen or not) a
    :class:`BatchNormFoldedConv2d`, in place.

    The modules stay the same objects with the same parameters, buffers and hooks (only their
    class changes), so state dicts, checkpoints, optimizers and ``requires_grad`` flags are
    unaffected; the forward differs at inference only, and by float rounding.

    Args:
        module (nn.Module): e.g. a detectron2 ``ResNet``.
        fold (bool): False turns folding off again (the unfolded forward, bit for bit).
        channels_last (bool): folded weights in ``torch.channels_last`` format (the conv outputs
            follow it).

    Returns:
        int: the number of convolutions converted.
    """
    count = 0
    for m in module.modules():
        if type(m) not in (Conv2d, BatchNormFoldedConv2d):
            continue  # subclasses of Conv2d may have their own forward
        if isinstance(m.norm, (FrozenBatchNorm2d, nn.modules.batchnorm._BatchNorm)):
            m.__class__ = BatchNormFoldedConv2d
            m.fold = fold
            m.channels_last = channels_last
            count += 1
    return count
