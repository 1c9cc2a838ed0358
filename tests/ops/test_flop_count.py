"""fvcore sees the compiled ops in a traced graph; the handles count them like the references."""

import pytest
import torch
from fvcore.nn import FlopCountAnalysis
from torch import nn

from lite_detr.ops import compiled_ops_available, ms_deform_attn, ms_deform_attn_key_aware
from lite_detr.ops.flop_count import FLOP_HANDLES
from lite_detr.ops.reference import ms_deform_attn_key_aware_reference, ms_deform_attn_reference

N, Lq, M, D, P = 2, 7, 2, 8, 3
SHAPES = ((4, 5), (2, 3))


class Sampler(nn.Module):
    def __init__(self, fn, key_aware: bool, with_key: bool = False):
        super().__init__()
        self.fn, self.key_aware, self.with_key = fn, key_aware, with_key
        self.register_buffer("shapes", torch.tensor(SHAPES))
        self.register_buffer("starts", torch.tensor([0, 20]))

    def forward(self, query, value, locations, weights):
        if self.key_aware:
            key = value * 2 if self.with_key else None
            args = (query, value, self.shapes, self.starts, locations)
            return self.fn(*args, key) if self.with_key else self.fn(*args)
        return self.fn(value, self.shapes, self.starts, locations, weights)


def count(module):
    L = len(SHAPES)
    inputs = (
        torch.randn(N, Lq, M, D),
        torch.randn(N, 26, M, D),
        torch.rand(N, Lq, M, L, P, 2),
        torch.rand(N, Lq, M, L, P),
    )
    analysis = FlopCountAnalysis(module, inputs).set_op_handle(**FLOP_HANDLES)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return analysis.total(), analysis.by_operator()


@pytest.mark.skipif(not compiled_ops_available(), reason="lite_detr._C is not built")
@pytest.mark.parametrize(
    "fn,ref_fn,key_aware,with_key,per_point",
    [
        (ms_deform_attn, ms_deform_attn_reference, False, False, 4),
        (ms_deform_attn_key_aware, ms_deform_attn_key_aware_reference, True, False, 6),
        (ms_deform_attn_key_aware, ms_deform_attn_key_aware_reference, True, True, 10),
    ],
)
def test_traced_op_is_counted_like_the_reference(fn, ref_fn, key_aware, with_key, per_point):
    total, by_op = count(Sampler(fn, key_aware, with_key))
    name = "ms_deform_attn_key_aware" if key_aware else "ms_deform_attn"
    expected = per_point * N * Lq * M * len(SHAPES) * P * D
    assert by_op == {name: expected}, by_op  # fvcore strips the namespace in by_operator()
    ref_total, ref_by_op = count(Sampler(ref_fn, key_aware, with_key))
    assert "grid_sampler" in ref_by_op
    assert ref_total == total == expected


@pytest.mark.skipif(not compiled_ops_available(), reason="lite_detr._C is not built")
def test_plain_fvcore_counts_our_ops_and_sdpa_without_handles():
    """Importing lite_detr.ops made our handles fvcore defaults: none passed by hand."""
    import torch.nn.functional as F

    L = len(SHAPES)
    inputs = (
        torch.randn(N, Lq, M, D),
        torch.randn(N, 26, M, D),
        torch.rand(N, Lq, M, L, P, 2),
        torch.rand(N, Lq, M, L, P),
    )
    module = Sampler(ms_deform_attn_key_aware, key_aware=True)
    plain = FlopCountAnalysis(module, inputs).unsupported_ops_warnings(False)
    assert plain.total() == count(module)[0] > 0
    assert not [op for op in plain.unsupported_ops() if op.startswith("lite_detr::")]

    class SDPA(nn.Module):
        def forward(self, q, k, v):
            return F.scaled_dot_product_attention(q, k, v)

    q, k, v = torch.rand(2, 4, 10, 8), torch.rand(2, 4, 6, 8), torch.rand(2, 4, 6, 8)
    flops = FlopCountAnalysis(SDPA(), (q, k, v)).unsupported_ops_warnings(False)
    assert flops.total() == 2 * 4 * 10 * 6 * (8 + 8)
