"""The compiled CPU backwards keep the storage of their largest gradients (grad_value, grad_key)
and reuse it once the gradient handed out has been freed: a held gradient is never written
again, and every call's gradients are those of a fresh computation."""

import pytest
import torch

from lite_detr.ops import (
    compiled_ops_available,
    ms_deform_attn,
    ms_deform_attn_key_aware,
    release_gradient_buffers,
)
from lite_detr.ops.reference import ms_deform_attn_key_aware_reference, ms_deform_attn_reference

pytestmark = pytest.mark.skipif(not compiled_ops_available(), reason="lite_detr._C is not built")

SHAPES = torch.tensor([[32, 48], [16, 24]])
STARTS = torch.tensor([0, 32 * 48])
S, M, D, LQ, P = 32 * 48 + 16 * 24, 8, 32, 300, 2  # grad_value: 1.9 MiB, above the 1 MiB kept


def _inputs(seed):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(1, LQ, M, D, generator=g),  # query
        torch.randn(1, S, M, D, generator=g),  # value
        torch.randn(1, S, M, D, generator=g),  # key
        torch.rand(1, LQ, M, 2, P, 2, generator=g),  # locations
        torch.rand(1, LQ, M, 2, P, generator=g),  # weights
        torch.randn(1, LQ, M * D, generator=g),  # grad_output
    )


def _grads(op, seed, compiled=True):
    """(grad_value, grad_key or None) of one backward."""
    query, value, key, loc, w, grad_out = _inputs(seed)
    value.requires_grad_(True)
    if op == "standard":
        fn = ms_deform_attn if compiled else ms_deform_attn_reference
        out = fn(value, SHAPES, STARTS, loc, w)
        return torch.autograd.grad(out, value, grad_out)[0], None
    key.requires_grad_(True)
    fn = ms_deform_attn_key_aware if compiled else ms_deform_attn_key_aware_reference
    out = fn(query, value, SHAPES, STARTS, loc, key)
    return tuple(torch.autograd.grad(out, (value, key), grad_out))


@pytest.mark.parametrize("op", ["standard", "key-aware"])
def test_freed_gradient_storage_is_reused_and_a_held_one_is_not_touched(op):
    release_gradient_buffers()
    first = _grads(op, seed=0)
    ptrs = [g.data_ptr() for g in first if g is not None]
    kept = [g.clone() for g in first if g is not None]
    held = _grads(op, seed=1)  # the first gradients are still held: new storage, now the kept
    held_ptrs = [g.data_ptr() for g in held if g is not None]
    assert not set(held_ptrs) & set(ptrs)
    for g, k in zip(first, kept):
        assert torch.equal(g, k)  # not overwritten by the second call
    shapes = [g.shape for g in held if g is not None]
    del first, held
    # blocks of the same size that malloc would hand out first, were the storage freed
    decoys = [torch.empty(shape) for shape in shapes]  # noqa: F841
    again = _grads(op, seed=2)  # the kept storage is free again: reused
    assert [g.data_ptr() for g in again if g is not None] == held_ptrs
    # every call's gradients are a fresh computation's (the reference's within tolerance, and
    # bitwise the same after the kept storage is released)
    for g, r in zip(again, _grads(op, seed=2, compiled=False)):
        if g is not None:
            torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)
    release_gradient_buffers()
    for g, f in zip(again, _grads(op, seed=2)):
        if g is not None:
            assert torch.equal(g, f)


def test_gradient_kept_by_a_view_is_not_reused():
    release_gradient_buffers()
    grad, _ = _grads("standard", seed=0)
    view = grad[0, :10]
    ptr = grad.data_ptr()
    snapshot = view.clone()
    del grad
    second, _ = _grads("standard", seed=1)
    assert second.data_ptr() != ptr
    assert torch.equal(view, snapshot)
