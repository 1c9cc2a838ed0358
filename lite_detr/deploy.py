"""
Deployment of a detector for CPU inference: :func:`optimize_for_cpu_inference`.

The detectors are plain PyTorch: built from a config, their eager inference computes what their
training graph computes. Running them fast on a CPU takes changes of how they compute (another
summation order, another memory layout, another GEMM library), which move the outputs by float
rounding; they are made here, in one explicit step, never by a constructor or a global switch.
The tools call it (:class:`lite_detr.engine.Predictor` and so ``tools/demo.py``,
``tools/benchmark.py`` and the inference benchmarks in ``benchmarks/``), and so can a user::

    model = instantiate(cfg.model)
    LiteDetrCheckpointer(model).load("model_final.pth")
    optimize_for_cpu_inference(model)
    with torch.no_grad():
        outputs = model([{"image": image}])
"""

from torch import nn

from lite_detr.layers import FFN, OneDNNLinear, TokenChunkedFFN
from lite_detr.modeling.backbone import fold_batchnorm_at_inference

__all__ = ["optimize_for_cpu_inference", "swap_module_class"]


def swap_module_class(module: nn.Module, cls: type, new_cls: type) -> int:
    """
    Make every submodule of ``module`` (``module`` included) whose type is exactly ``cls`` a
    ``new_cls``, in place, and return how many changed. ``new_cls`` is a subclass of ``cls``
    that only overrides the forward: the modules stay the same objects with the same
    parameters, buffers and hooks, so state dicts, checkpoints and optimizers are unaffected.
    Subclasses of ``cls`` are left alone (they may have their own forward or callers, e.g. the
    output projection of ``nn.MultiheadAttention``, whose weight it reads directly).
    """
    if not issubclass(new_cls, cls):
        raise TypeError(f"{new_cls.__name__} must be a subclass of {cls.__name__}")
    count = 0
    for m in module.modules():
        if type(m) is cls:
            m.__class__ = new_cls
            count += 1
    return count


def optimize_for_cpu_inference(model: nn.Module) -> nn.Module:
    """
    Make ``model`` fast at eager CPU inference, in place, and return it in eval mode. For
    inference only: call it once the weights are loaded (the model's own training needs none of
    it; its forward in training mode or under autograd is the plain one).

    What it changes (forwards only, chosen by each module's class):

    * BatchNorm folded into the convolutions: every detectron2 ``Conv2d`` whose norm is a
      ``FrozenBatchNorm2d`` or an eval-mode ``BatchNorm2d`` becomes a
      :class:`~lite_detr.modeling.backbone.BatchNormFoldedConv2d`, which runs one convolution with
      the folded weight (cached until the weights change), laid out channels-last, so that the
      backbone's feature maps are channels-last and oneDNN runs its convs without reordering
      them (2-4x on the stride-4 convs of a ResNet). On any device.
    * Linears through oneDNN: every ``nn.Linear`` becomes a
      :class:`~lite_detr.layers.OneDNNLinear`, whose linears over >= 1024 float32 CPU rows run as
      oneDNN 1x1 convolutions instead of MKL's GEMM (15-40% less time on the AMD CPUs where MKL
      runs its generic kernel).
    * The FFN in token chunks: every :class:`~lite_detr.layers.FFN` becomes a
      :class:`~lite_detr.layers.TokenChunkedFFN`, which runs 1024 CPU tokens at a time so that
      its hidden stays in the cache (bitwise the same rows).

    Autograd, training mode (the folding), tracing, ``torch.compile`` and ONNX export run the
    plain forwards, so FLOP counts and exported graphs are those of the plain model. Parameters,
    buffers and the state dict (keys and values) are unchanged: checkpoints save and load as
    before. Outputs differ from the plain model's by float rounding only (encoder memory ~1e-6
    of its scale; detections of near-equal scores may trade places at the top-k cut).
    Idempotent: a second call changes nothing. The process-wide allocator setting that the
    tools also make (:func:`lite_detr.utils.malloc.reuse_freed_memory`) is separate: it
    concerns the whole process, not the model.

    Args:
        model (nn.Module): a detector (or any module), float32.

    Returns:
        nn.Module: ``model``, in eval mode.
    """
    model.eval()
    fold_batchnorm_at_inference(model)
    swap_module_class(model, nn.Linear, OneDNNLinear)
    swap_module_class(model, FFN, TokenChunkedFFN)
    return model
