"""Multi-scale deformable attention ops: dispatch to ``lite_detr._C`` (whose C++ entry points check
the inputs), autograd.

The compiled ops live in the ``lite_detr`` torch.library namespace (schemas in
``ops/ms_deform_attn.cpp``). This module registers their fake kernels and autograd formulas so
``torch.library.opcheck`` and ``torch.compile`` work, and falls back to the pure-PyTorch references
(with one warning) when the extension cannot be loaded or was built without the needed device.
"""

import logging
import warnings
from typing import Tuple

import torch

from .reference import ms_deform_attn_key_aware_reference, ms_deform_attn_reference

__all__ = [
    "ms_deform_attn",
    "ms_deform_attn_key_aware",
    "compiled_ops_available",
    "compiled_ops_load_error",
    "cpu_kernels",
]

logger = logging.getLogger(__name__)

_OP_NAMES = (
    "ms_deform_attn",
    "ms_deform_attn_backward",
    "ms_deform_attn_key_aware",
    "ms_deform_attn_key_aware_backward",
)


def _load_compiled_ops() -> str | None:
    """Import ``lite_detr._C`` (it registers the ops); return why it failed, or None."""
    try:
        from lite_detr import _C  # noqa: F401
    except (ImportError, OSError) as e:
        return f"{type(e).__name__}: {e}"
    missing = [n for n in _OP_NAMES if not hasattr(torch.ops.lite_detr, n)]
    if missing:
        return f"lite_detr._C loaded but does not define {missing}"
    return None


_LOAD_ERROR = _load_compiled_ops()
_WARNED = set()


def _has_kernels(dispatch_key: str) -> bool:
    return _LOAD_ERROR is None and all(
        torch._C._dispatch_has_kernel_for_dispatch_key(f"lite_detr::{n}", dispatch_key)
        for n in _OP_NAMES
    )


# fixed at import: a plain dict lookup that torch.compile traces through
_AVAILABLE = {"cpu": _has_kernels("CPU"), "cuda": _has_kernels("CUDA")}


def compiled_ops_available(device_type: str = "cpu") -> bool:
    """
    Whether the compiled kernels of both ops exist for ``device_type`` ("cpu" or "cuda").

    A CPU-only build of ``lite_detr._C`` reports False for "cuda".
    """
    return _AVAILABLE.get(device_type, False)


def compiled_ops_load_error() -> str | None:
    """Why ``lite_detr._C`` could not be loaded, or None if it was."""
    return _LOAD_ERROR


def cpu_kernels() -> str | None:
    """
    Which build of the compiled CPU kernels runs: "avx2" (AVX2 + FMA, picked when the CPU has
    both) or "baseline"; None without the compiled ops. The environment variable
    LITE_DETR_CPU_KERNELS=baseline forces the baseline build (auto, the default, picks).
    """
    if _LOAD_ERROR is None and hasattr(torch.ops.lite_detr, "cpu_kernels"):
        return torch.ops.lite_detr.cpu_kernels()
    return None


def _warn_fallback(device_type: str) -> None:
    if device_type in _WARNED:
        return
    _WARNED.add(device_type)
    if _LOAD_ERROR is not None:
        why = f"the extension lite_detr._C could not be loaded ({_LOAD_ERROR})"
    else:
        why = f"lite_detr._C was built without {device_type} kernels"
    msg = (
        f"lite_detr.ops: {why}; the pure-PyTorch reference of the deformable attention ops runs "
        f"on {device_type} instead (slower, more memory). Build it with "
        "`pip install --no-build-isolation -e .` or `make install` (FORCE_CUDA=1 for the CUDA "
        "kernels)."
    )
    warnings.warn(msg, RuntimeWarning, stacklevel=3)


# ---------------------------------------------------------------------------------------------
# What the C++ boundary cannot see
# ---------------------------------------------------------------------------------------------


def _prepare_inputs(op: str, names: Tuple[str, ...], *tensors):
    """The only Python-side handling of the inputs; the C++ entry points (``check_inputs`` in
    ``ops/ms_deform_attn.cpp``) check everything else, once, for every caller (the raw ops,
    ``torch.compile`` and ``torch.export`` graphs included), and the references guard themselves.
    Three things never reach C++ as such:

    * a non-tensor argument: this function reads ``.device`` / ``.contiguous()`` first;
    * a device that autocast does not know (``meta``): the op would dispatch to its fake kernel
      and return empty tensors, so the error names the input here;
    * ``torch.autocast``: the ops compute in float32 under it, whatever dtypes autocast gave
      their inputs (e.g. float16 values from a linear layer beside float32 sampling locations):
      normalised locations need float32's precision (a float16 location is off by up to 0.3 px
      on a 160-px map), and the op is cheap next to the layers around it. Outside autocast,
      inputs keep their dtype and must agree.

    ``names`` name ``tensors``; a None (the key-aware op's ``key``) passes through.
    """
    for name, t in zip(names, tensors):
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    ref_name, ref = names[0], tensors[0]
    try:
        autocast = torch.is_autocast_enabled(ref.device.type)
    except RuntimeError as e:  # "unknown device type for autocast"
        raise ValueError(
            f"{op}: {ref_name} is on device '{ref.device}', on which it cannot run: pass CPU or "
            "CUDA tensors (meta tensors have no data to sample)"
        ) from e
    if not autocast:
        return tensors
    return tuple(t.float() if t is not None and t.is_floating_point() else t for t in tensors)


def _use_compiled(device_type: str) -> bool:
    if compiled_ops_available(device_type):
        return True
    _warn_fallback(device_type)
    return False


# ---------------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------------


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """
    Multi-scale deformable attention (Deformable DETR, Zhu et al. 2021, eq. 3).

    Samples ``value`` bilinearly at the given points (``grid_sample(align_corners=False,
    padding_mode="zeros")`` semantics: pixel centres at (i + 0.5) / size, corners outside the map
    contribute zero) and returns the ``attention_weights``-weighted sum over levels and points.
    Points with NaN/Inf coordinates contribute zero and get a zero gradient.
    Differentiable w.r.t. ``value``, ``sampling_locations`` and ``attention_weights``.
    Non-contiguous inputs are copied. Under ``torch.autocast`` it computes in float32.

    Args:
        value (Tensor): (N, S, M, D), S = sum_l H_l * W_l, levels flattened fine-to-coarse.
        spatial_shapes (Tensor): (L, 2) int64, (H_l, W_l) of each level.
        level_start_index (Tensor): (L,) int64, offset of each level in S.
        sampling_locations (Tensor): (N, Lq, M, L, P, 2) normalised (x, y), inside in [0, 1].
        attention_weights (Tensor): (N, Lq, M, L, P).

    Returns:
        Tensor: (N, Lq, M * D), same dtype as ``value``.
    """
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights = (
        _prepare_inputs(
            "ms_deform_attn",
            (
                "value",
                "spatial_shapes",
                "level_start_index",
                "sampling_locations",
                "attention_weights",
            ),
            value,
            spatial_shapes,
            level_start_index,
            sampling_locations,
            attention_weights,
        )
    )
    if not _use_compiled(value.device.type):
        return ms_deform_attn_reference(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )
    return torch.ops.lite_detr.ms_deform_attn(
        value.contiguous(),
        spatial_shapes.contiguous(),
        level_start_index.contiguous(),
        sampling_locations.contiguous(),
        attention_weights.contiguous(),
    )


def ms_deform_attn_key_aware(
    query: torch.Tensor,
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    key: torch.Tensor | None = None,
) -> torch.Tensor:
    """
    Key-aware deformable attention (Lite DETR, Li et al. 2023, sec. 3.3), fused.

    Keys and values are sampled at the same points (one gather when ``key`` is None); the weights
    are a softmax over all L * P points of (q . k) / sqrt(D), per query and head. The compiled
    kernel never materialises the (N, Lq, M, L * P, D) sampled tensors. Sampling semantics as in
    :func:`ms_deform_attn`. Differentiable w.r.t. ``query``, ``value``, ``key`` and
    ``sampling_locations``. Non-contiguous inputs are copied. Under ``torch.autocast`` it
    computes in float32.

    Args:
        query (Tensor): (N, Lq, M, D), already projected per head.
        value (Tensor): (N, S, M, D).
        spatial_shapes (Tensor): (L, 2) int64, (H_l, W_l) of each level.
        level_start_index (Tensor): (L,) int64, offset of each level in S.
        sampling_locations (Tensor): (N, Lq, M, L, P, 2) normalised (x, y).
        key (Tensor or None): (N, S, M, D); None means the keys are the values (W_K = W_V).

    Returns:
        Tensor: (N, Lq, M * D), same dtype as ``value``.
    """
    query, value, spatial_shapes, level_start_index, sampling_locations, key = _prepare_inputs(
        "ms_deform_attn_key_aware",
        ("query", "value", "spatial_shapes", "level_start_index", "sampling_locations", "key"),
        query,
        value,
        spatial_shapes,
        level_start_index,
        sampling_locations,
        key,
    )
    if not _use_compiled(value.device.type):
        return ms_deform_attn_key_aware_reference(
            query, value, spatial_shapes, level_start_index, sampling_locations, key
        )
    out, _ = torch.ops.lite_detr.ms_deform_attn_key_aware(
        query.contiguous(),
        value.contiguous(),
        None if key is None else key.contiguous(),
        spatial_shapes.contiguous(),
        level_start_index.contiguous(),
        sampling_locations.contiguous(),
    )
    return out


# ---------------------------------------------------------------------------------------------
# torch.library registrations of the compiled ops: fake kernels and autograd
# ---------------------------------------------------------------------------------------------


def _attn_dtype(dtype: torch.dtype) -> torch.dtype:
    # the saved softmax weights keep the kernels' accumulation precision
    return torch.float64 if dtype == torch.float64 else torch.float32


def _register_compiled_ops() -> None:
    @torch.library.register_fake("lite_detr::ms_deform_attn")
    def _(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        N, _, M, D = value.shape
        return value.new_empty((N, sampling_locations.shape[1], M * D))

    @torch.library.register_fake("lite_detr::ms_deform_attn_backward")
    def _(grad_output, value, spatial_shapes, level_start_index, locations, attention_weights):
        return (
            torch.empty_like(value),
            torch.empty_like(locations),
            torch.empty_like(attention_weights),
        )

    @torch.library.register_fake("lite_detr::ms_deform_attn_key_aware")
    def _(query, value, key, spatial_shapes, level_start_index, sampling_locations):
        N, Lq, M, L, P, _ = sampling_locations.shape
        out = value.new_empty((N, Lq, M * value.shape[-1]))
        attn = value.new_empty((N, Lq, M, L * P), dtype=_attn_dtype(value.dtype))
        return out, attn

    @torch.library.register_fake("lite_detr::ms_deform_attn_key_aware_backward")
    def _(grad_output, query, value, key, spatial_shapes, level_start_index, locations, attn):
        grad_key = torch.empty_like(key) if key is not None else value.new_empty((0,))
        return (
            torch.empty_like(query),
            torch.empty_like(value),
            grad_key,
            torch.empty_like(locations),
        )

    def _setup_standard(ctx, inputs, output):
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights = inputs
        ctx.save_for_backward(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )

    def _backward_standard(ctx, grad_output):
        grad_value, grad_loc, grad_attn = torch.ops.lite_detr.ms_deform_attn_backward(
            grad_output.contiguous(), *ctx.saved_tensors
        )
        return grad_value, None, None, grad_loc, grad_attn

    torch.library.register_autograd(
        "lite_detr::ms_deform_attn", _backward_standard, setup_context=_setup_standard
    )

    def _setup_key_aware(ctx, inputs, output):
        query, value, key, spatial_shapes, level_start_index, sampling_locations = inputs
        ctx.has_key = key is not None
        ctx.save_for_backward(
            query, value, key, spatial_shapes, level_start_index, sampling_locations, output[1]
        )

    def _backward_key_aware(ctx, grad_output, grad_attn):
        # the softmax weights are returned for the backward only: the public function drops them
        grad_query, grad_value, grad_key, grad_loc = (
            torch.ops.lite_detr.ms_deform_attn_key_aware_backward(
                grad_output.contiguous(), *ctx.saved_tensors
            )
        )
        return grad_query, grad_value, grad_key if ctx.has_key else None, None, None, grad_loc

    torch.library.register_autograd(
        "lite_detr::ms_deform_attn_key_aware", _backward_key_aware, setup_context=_setup_key_aware
    )


if _LOAD_ERROR is None:
    _register_compiled_ops()
else:
    logger.debug("lite_detr._C not loaded: %s", _LOAD_ERROR)
