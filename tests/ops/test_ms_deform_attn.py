"""Tests of lite_detr.ops: compiled kernels vs the pure-PyTorch references, gradients, edge cases,
torch.library integration, determinism and input checks. CUDA tests skip without a GPU."""

import dataclasses
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lite_detr.ops import (
    compiled_ops_available,
    compiled_ops_load_error,
    ms_deform_attn,
    ms_deform_attn_key_aware,
)
from lite_detr.ops.reference import ms_deform_attn_key_aware_reference, ms_deform_attn_reference

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
needs_compiled = pytest.mark.skipif(
    not compiled_ops_available(), reason="lite_detr._C is not built (test_compiled_ops_load fails)"
)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@dataclass
class OpInputs:
    value: torch.Tensor  # (N, S, M, D)
    spatial_shapes: torch.Tensor  # (L, 2)
    level_start_index: torch.Tensor  # (L,)
    sampling_locations: torch.Tensor  # (N, Lq, M, L, P, 2)
    attention_weights: torch.Tensor  # (N, Lq, M, L, P)
    query: torch.Tensor  # (N, Lq, M, D)
    key: torch.Tensor  # (N, S, M, D)

    def standard(self):
        return (
            self.value,
            self.spatial_shapes,
            self.level_start_index,
            self.sampling_locations,
            self.attention_weights,
        )

    def key_aware(self, with_key: bool):
        args = (
            self.query,
            self.value,
            self.spatial_shapes,
            self.level_start_index,
            self.sampling_locations,
        )
        return args + ((self.key,) if with_key else ())


def make_inputs(
    shapes=((4, 5), (2, 3)),
    N=2,
    Lq=5,
    M=2,
    D=4,
    P=3,
    dtype=torch.float64,
    device="cpu",
    loc_range=(-0.2, 1.2),
    seed=0,
    requires_grad=False,
) -> OpInputs:
    """Random inputs; locations uniform in ``loc_range`` so some points fall outside the map."""
    gen = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64)
    areas = spatial_shapes.prod(1)
    level_start_index = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    S, L = int(areas.sum()), len(shapes)

    def rand(*size, low=-1.0, high=1.0):
        t = torch.rand(*size, generator=gen, dtype=torch.float64) * (high - low) + low
        return t.to(dtype=dtype, device=device).requires_grad_(requires_grad)

    return OpInputs(
        value=rand(N, S, M, D),
        spatial_shapes=spatial_shapes.to(device),
        level_start_index=level_start_index.to(device),
        sampling_locations=rand(N, Lq, M, L, P, 2, low=loc_range[0], high=loc_range[1]),
        attention_weights=rand(N, Lq, M, L, P, low=0.0, high=1.0),
        query=rand(N, Lq, M, D, low=-2.0, high=2.0),
        key=rand(N, S, M, D),
    )


def max_rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference relative to the largest magnitude of ``expected``."""
    scale = expected.detach().abs().max().clamp_min(1e-30)
    return float((actual.detach() - expected.detach()).abs().max() / scale)


def run_both(inp: OpInputs, op: str, with_key: bool = False, grad_seed: int = 1):
    """Output and gradients of every floating input, for the public op and for the reference."""
    if op == "standard":
        args = inp.standard()
        fns = (ms_deform_attn, ms_deform_attn_reference)
        wrt = (inp.value, inp.sampling_locations, inp.attention_weights)
    else:
        args = inp.key_aware(with_key)
        fns = (ms_deform_attn_key_aware, ms_deform_attn_key_aware_reference)
        wrt = (inp.query, inp.value, inp.sampling_locations) + ((inp.key,) if with_key else ())
    results = []
    for fn in fns:
        out = fn(*args)
        grad_out = torch.randn(
            out.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=torch.float64
        ).to(out)
        grads = torch.autograd.grad(out, wrt, grad_out)
        results.append((out, grads))
    return results


CASES = [
    # (spatial shapes, D): one level and several, non-square maps, odd channel counts
    (((4, 5),), 3),
    (((6, 9), (3, 5), (2, 2), (1, 1)), 1),
    (((6, 9), (3, 5), (2, 2), (1, 1)), 3),
    (((5, 3), (3, 2)), 32),
    (((5, 3), (3, 2)), 64),
    (((7, 4), (1, 3), (2, 1)), 65),
]
OPS = [("standard", False), ("key_aware", False), ("key_aware", True)]


def test_compiled_ops_load():
    assert compiled_ops_available(), f"lite_detr._C did not load: {compiled_ops_load_error()}"
    assert hasattr(torch.ops.lite_detr, "ms_deform_attn_key_aware")


@needs_compiled
@pytest.mark.parametrize("op,with_key", OPS)
@pytest.mark.parametrize("shapes,D", CASES)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_matches_reference(op, with_key, shapes, D, dtype, tol):
    inp = make_inputs(shapes=shapes, D=D, dtype=dtype, requires_grad=True, seed=D)
    (out, grads), (ref_out, ref_grads) = run_both(inp, op, with_key)
    assert out.dtype == dtype and out.shape == ref_out.shape
    assert max_rel_err(out, ref_out) < tol
    for g, ref_g in zip(grads, ref_grads):
        assert g.shape == ref_g.shape and g.dtype == dtype
        assert max_rel_err(g, ref_g) < tol


@needs_compiled
@pytest.mark.parametrize("op,with_key", OPS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_cpu(op, with_key, dtype):
    """Half inputs accumulate in float: the result is the float reference, rounded."""
    inp = make_inputs(dtype=dtype, D=8)
    f32 = OpInputs(*(t.float() if t.is_floating_point() else t for t in vars(inp).values()))
    if op == "standard":
        out, ref = ms_deform_attn(*inp.standard()), ms_deform_attn_reference(*f32.standard())
    else:
        out = ms_deform_attn_key_aware(*inp.key_aware(with_key))
        ref = ms_deform_attn_key_aware_reference(*f32.key_aware(with_key))
    assert out.dtype == dtype
    assert max_rel_err(out.float(), ref) < 1e-2


@needs_compiled
@pytest.mark.parametrize("op,with_key", OPS)
def test_gradcheck(op, with_key):
    inp = make_inputs(shapes=((3, 4), (2, 3)), N=1, Lq=2, M=2, D=3, P=2, requires_grad=True)
    if op == "standard":
        assert torch.autograd.gradcheck(ms_deform_attn, inp.standard())
    else:
        assert torch.autograd.gradcheck(ms_deform_attn_key_aware, inp.key_aware(with_key))


def single_point(loc_xy, shapes=((3, 4),), D=2, dtype=torch.float64):
    """Inputs with one query, one head and one point per level at ``loc_xy``."""
    inp = make_inputs(shapes=shapes, N=1, Lq=1, M=1, D=D, P=1, dtype=dtype, requires_grad=True)
    with torch.no_grad():
        inp.sampling_locations.copy_(torch.tensor(loc_xy, dtype=dtype).view(1, 1, 1, -1, 1, 2))
        inp.attention_weights.fill_(1.0)
    return inp


@needs_compiled
def test_pixel_centres_sample_the_pixel():
    H, W = 3, 4
    inp = single_point([0.0, 0.0], shapes=((H, W),))
    for i in range(H):
        for j in range(W):
            with torch.no_grad():
                inp.sampling_locations.copy_(
                    torch.tensor([(j + 0.5) / W, (i + 0.5) / H]).view(1, 1, 1, 1, 1, 2)
                )
            expected = inp.value[0, i * W + j, 0]
            torch.testing.assert_close(ms_deform_attn(*inp.standard())[0, 0], expected)
            # one point: the softmax weight is 1 whatever the key
            torch.testing.assert_close(
                ms_deform_attn_key_aware(*inp.key_aware(True))[0, 0], expected
            )


@needs_compiled
@pytest.mark.parametrize("op,with_key", OPS)
@pytest.mark.parametrize(
    "loc_xy",
    [
        [0.0, 0.0],  # corner of the map: one quarter of pixel (0, 0)
        [1.0, 1.0],
        [0.0, 0.5],  # left border
        [0.5, 1.0],  # bottom border
        [1.0 + 1 / 8, 0.5],  # beyond the border: zero
        [-0.3, 0.4],
        [0.5, 7.0],
    ],
)
def test_border_and_outside_points(op, with_key, loc_xy):
    inp = single_point(loc_xy * 2, shapes=((3, 4), (2, 2)))
    (out, grads), (ref_out, ref_grads) = run_both(inp, op, with_key)
    torch.testing.assert_close(out, ref_out)
    for g, ref_g in zip(grads, ref_grads):
        torch.testing.assert_close(g, ref_g)
    if loc_xy == [0.0, 0.0] and op == "standard":
        v = inp.value[0, 0, 0] + inp.value[0, 12, 0]  # quarter of (0, 0) on both levels
        torch.testing.assert_close(out[0, 0], 0.25 * v)
    if loc_xy[1] == 7.0:
        assert out.abs().max() == 0 and grads[0].abs().max() == 0


@needs_compiled
@pytest.mark.parametrize("op,with_key", OPS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 1e30])
def test_non_finite_locations_are_zero_contributions(op, with_key, bad):
    """NaN/Inf (or absurd) coordinates: the point contributes zero and gets zero gradient."""
    inp = make_inputs(requires_grad=True)
    with torch.no_grad():
        inp.sampling_locations[0, 1, 0, 0, 1, 0] = bad  # x only
        inp.sampling_locations[1, 2, 1, 1, 0] = bad  # x and y
    (out, grads), (ref_out, ref_grads) = run_both(inp, op, with_key)
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)
    torch.testing.assert_close(out, ref_out)
    for g, ref_g in zip(grads, ref_grads):
        torch.testing.assert_close(g, ref_g)
    grad_loc = grads[1] if op == "standard" else grads[2]
    assert grad_loc[0, 1, 0, 0, 1].abs().max() == 0 and grad_loc[1, 2, 1, 1, 0].abs().max() == 0


@needs_compiled
@pytest.mark.parametrize("with_key", [False, True])
def test_key_aware_with_zero_query_is_uniform_average(with_key):
    """q = 0 gives uniform weights 1 / (L * P): the standard op with constant weights."""
    inp = make_inputs()
    inp.query.zero_()
    L, P = inp.attention_weights.shape[-2:]
    inp.attention_weights.fill_(1.0 / (L * P))
    torch.testing.assert_close(
        ms_deform_attn_key_aware(*inp.key_aware(with_key)), ms_deform_attn(*inp.standard())
    )


@needs_compiled
def test_key_aware_uses_key_for_weights_only():
    """A key that favours one point makes the output that point's value."""
    inp = make_inputs(shapes=((1, 2),), N=1, Lq=1, M=1, D=2, P=2)
    inp.sampling_locations.copy_(torch.tensor([[0.25, 0.5], [0.75, 0.5]]).view(1, 1, 1, 1, 2, 2))
    inp.query.fill_(10.0)
    inp.key.copy_(torch.tensor([[-5.0, -5.0], [5.0, 5.0]]).view(1, 2, 1, 2))
    out = ms_deform_attn_key_aware(*inp.key_aware(True))
    torch.testing.assert_close(out[0, 0], inp.value[0, 1, 0])


@needs_compiled
@pytest.mark.parametrize("op,with_key", OPS)
def test_deterministic(op, with_key):
    """Same inputs: bitwise the same outputs and gradients, also across thread counts."""
    inp = make_inputs(shapes=((8, 9), (4, 5)), Lq=40, M=4, D=16, P=4, dtype=torch.float32)
    inp.sampling_locations.uniform_(0.3, 0.4)  # crowded points: many scatters on the same pixels
    for t in vars(inp).values():
        t.requires_grad_(t.is_floating_point())
    threads = torch.get_num_threads()
    try:
        runs = []
        for n in (2, 2, 1):
            torch.set_num_threads(n)
            runs.append(run_both(inp, op, with_key)[0])
    finally:
        torch.set_num_threads(threads)
    for out, grads in runs[1:]:
        assert torch.equal(out, runs[0][0])
        assert all(torch.equal(g, g0) for g, g0 in zip(grads, runs[0][1]))


# The CPU backward runs one task per (batch, head, level) slice and copies a slice into a dense
# buffer when its points touch its tokens several times over: "dense" has many queries on small
# maps, "sparse" few queries on a large map (a decoder's case), "mixed" both in one call.
SLICE_REGIMES = {
    "dense": {"shapes": ((8, 9), (4, 5)), "Lq": 60},
    "sparse": {"shapes": ((40, 50), (10, 12)), "Lq": 3},
    "mixed": {"shapes": ((30, 30), (2, 3)), "Lq": 12},
}


@needs_compiled
@pytest.mark.parametrize("op,with_key", OPS)
@pytest.mark.parametrize("regime", sorted(SLICE_REGIMES))
@pytest.mark.parametrize("D", [8, 32])  # 32: the kernels' compile-time channel count
def test_backward_is_bitwise_deterministic_for_any_thread_count(op, with_key, regime, D):
    """Same inputs: bitwise the same gradients run to run and with 1, 2 or 3 threads (each slice
    of grad_value is summed by one task in query order), and the reference's gradients."""
    inp = make_inputs(
        N=2, M=3, D=D, P=4, dtype=torch.float32, loc_range=(0.2, 0.5), **SLICE_REGIMES[regime]
    )
    for t in vars(inp).values():
        t.requires_grad_(t.is_floating_point())
    threads = torch.get_num_threads()
    try:
        runs = []
        for n in (2, 2, 1, 3):
            torch.set_num_threads(n)
            runs.append(run_both(inp, op, with_key))
    finally:
        torch.set_num_threads(threads)
    (_, grads), (_, ref_grads) = runs[0]
    for (_, other), _ in runs[1:]:
        assert all(torch.equal(g, g0) for g, g0 in zip(other, grads))
    for g, ref_g in zip(grads, ref_grads):
        assert max_rel_err(g, ref_g) < 1e-5


@needs_compiled
@pytest.mark.parametrize("regime", sorted(SLICE_REGIMES))
def test_compile_time_channel_count_gives_the_run_time_results(regime):
    """D = 32 runs kernels compiled for exactly 32 channels; with a 33rd channel of zeros the
    run-time-D kernels compute the same sums (plus exact zeros): bitwise the same output and
    gradients on the first 32 channels."""
    inp = make_inputs(
        N=2, M=3, D=32, P=4, dtype=torch.float32, loc_range=(0.2, 0.5), **SLICE_REGIMES[regime]
    )
    N, S, M, _ = inp.value.shape
    padded = torch.cat([inp.value, inp.value.new_zeros(N, S, M, 1)], -1)
    results = []
    for value in (inp.value, padded):
        value = value.detach().requires_grad_()
        loc = inp.sampling_locations.detach().requires_grad_()
        weights = inp.attention_weights.detach().requires_grad_()
        out = ms_deform_attn(value, inp.spatial_shapes, inp.level_start_index, loc, weights)
        out = out.view(*out.shape[:2], M, -1)
        grad_out = torch.randn(out.shape[:3] + (32,), generator=torch.Generator().manual_seed(1))
        grad_out = torch.cat(
            [grad_out, grad_out.new_zeros(out.shape[:3] + (out.shape[3] - 32,))], -1
        )
        grads = torch.autograd.grad(out, (value, loc, weights), grad_out)
        results.append((out[..., :32], grads[0][..., :32], grads[1], grads[2]))
    for fixed, run_time in zip(*results):
        assert torch.equal(fixed, run_time)


@needs_compiled
def test_non_contiguous_inputs_are_accepted():
    inp = make_inputs(D=4)
    value_t = inp.value.transpose(2, 3).contiguous().transpose(2, 3)
    assert not value_t.is_contiguous()
    args = (value_t,) + inp.standard()[1:]
    torch.testing.assert_close(ms_deform_attn(*args), ms_deform_attn_reference(*inp.standard()))


# ---------------------------------------------------------------------------------------------
# torch.library integration
# ---------------------------------------------------------------------------------------------


@needs_compiled
@pytest.mark.parametrize("op,with_key", OPS)
def test_opcheck(op, with_key):
    inp = make_inputs(shapes=((3, 4), (2, 3)), N=2, Lq=3, M=2, D=3, P=2, requires_grad=True)
    if op == "standard":
        torch.library.opcheck(torch.ops.lite_detr.ms_deform_attn.default, inp.standard())
    else:
        args = inp.key_aware(True)
        if not with_key:
            args = args[:2] + (None,) + args[2:-1]
        else:
            args = args[:2] + (args[-1],) + args[2:-1]
        torch.library.opcheck(torch.ops.lite_detr.ms_deform_attn_key_aware.default, args)


@needs_compiled
def test_torch_compile_smoke():
    inp = make_inputs(requires_grad=True, dtype=torch.float32)

    def layer(query, value, shapes, starts, locations, weights):
        key_aware = ms_deform_attn_key_aware(query, value, shapes, starts, locations)
        standard = ms_deform_attn(value, shapes, starts, locations, weights)
        return (key_aware * standard).sum()

    args = (inp.query, inp.value, inp.spatial_shapes, inp.level_start_index)
    args += (inp.sampling_locations, inp.attention_weights)
    torch._dynamo.reset()
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    loss = compiled(*args)
    grads = torch.autograd.grad(loss, (inp.query, inp.value, inp.sampling_locations))
    ref_loss = layer(*args)
    ref_grads = torch.autograd.grad(ref_loss, (inp.query, inp.value, inp.sampling_locations))
    torch.testing.assert_close(loss, ref_loss)
    for g, ref_g in zip(grads, ref_grads):
        torch.testing.assert_close(g, ref_g)


def test_fallback_warns_once_and_runs_reference():
    """Without lite_detr._C the references run, with a single warning saying so."""
    code = """
import sys, warnings
sys.modules["lite_detr._C"] = None  # makes `from lite_detr import _C` fail
import torch
import lite_detr.ops as ops
assert not ops.compiled_ops_available() and "lite_detr._C" in ops.compiled_ops_load_error()
v = torch.randn(1, 6, 1, 2); ss = torch.tensor([[2, 3]]); lsi = torch.tensor([0])
loc = torch.rand(1, 4, 1, 1, 2, 2); w = torch.rand(1, 4, 1, 1, 2); q = torch.randn(1, 4, 1, 2)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for _ in range(3):
        out = ops.ms_deform_attn(v, ss, lsi, loc, w)
        out_ka = ops.ms_deform_attn_key_aware(q, v, ss, lsi, loc)
messages = [str(c.message) for c in caught]
assert len(messages) == 1 and "pure-PyTorch reference" in messages[0], messages
ref = ops.reference.ms_deform_attn_reference(v, ss, lsi, loc, w)
assert torch.equal(out, ref) and out_ka.shape == (1, 4, 2)
print("ok")
"""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr


# ---------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------


def _bad_cases():
    """(name, mutate(args dict) -> None, exception, message regex) for the public functions."""
    return [
        ("value 3-d", lambda a: a.update(value=a["value"][0]), ValueError, r"value must be \(N"),
        (
            "value int",
            lambda a: a.update(value=a["value"].long()),
            TypeError,
            "value must be float",
        ),
        (
            "loc dtype",
            lambda a: a.update(sampling_locations=a["sampling_locations"].float()),
            TypeError,
            "sampling_locations must have dtype torch.float64",
        ),
        (
            "loc last dim",
            lambda a: a.update(sampling_locations=a["sampling_locations"][..., :1]),
            ValueError,
            "sampling_locations must have size 2 at dim 5",
        ),
        (
            "loc heads",
            lambda a: a.update(sampling_locations=a["sampling_locations"][:, :, :1]),
            ValueError,
            "sampling_locations has M=1 at dim 2 but value has M=2",
        ),
        (
            "loc levels",
            lambda a: a.update(sampling_locations=a["sampling_locations"][:, :, :, :1]),
            ValueError,
            "has L=2 at dim . but sampling_locations has L=1 at dim 3",
        ),
        (
            "weights points",
            lambda a: a.update(attention_weights=a["attention_weights"][..., :1]),
            ValueError,
            "attention_weights has P=1 at dim 4 but sampling_locations has P=3",
        ),
        (
            "query channels",
            lambda a: a.update(query=a["query"][..., :1]),
            ValueError,
            "query has D=1 at dim 3 but value has D=4",
        ),
        (
            "key tokens",
            lambda a: a.update(key=a["key"][:, :1]),
            ValueError,
            "key has S=1 at dim 1 but value has S=26",
        ),
        (
            "shapes dtype",
            lambda a: a.update(spatial_shapes=a["spatial_shapes"].int()),
            TypeError,
            "spatial_shapes must have dtype torch.int64",
        ),
        (
            "shapes sum",
            lambda a: a.update(spatial_shapes=torch.tensor([[4, 5], [2, 2]])),
            ValueError,
            r"sum of H\*W over spatial_shapes .* is 24 but value has S=26",
        ),
        (
            "shapes non-positive",
            lambda a: a.update(spatial_shapes=torch.tensor([[0, 5], [2, 3]])),
            ValueError,
            "spatial_shapes must be positive",
        ),
        (
            "start index",
            lambda a: a.update(level_start_index=torch.tensor([0, 19])),
            ValueError,
            r"level_start_index \[0, 19\] is inconsistent with .* expected \[0, 20\]",
        ),
        (
            "start index shape",
            lambda a: a.update(level_start_index=torch.tensor([0])),
            ValueError,
            "level_start_index has L=1 at dim 0 but sampling_locations has L=2",
        ),
        (
            "no levels",
            lambda a: a.update(
                spatial_shapes=torch.zeros(0, 2, dtype=torch.long),
                level_start_index=torch.zeros(0, dtype=torch.long),
                sampling_locations=a["sampling_locations"][:, :, :, :0],
                attention_weights=a["attention_weights"][:, :, :, :0],
            ),
            ValueError,
            "spatial_shapes must hold at least one level",
        ),
        (
            "not a tensor",
            lambda a: a.update(query=[1.0]),
            TypeError,
            "query must be a torch.Tensor",
        ),
    ]


@pytest.mark.parametrize("name,mutate,exc,match", _bad_cases(), ids=lambda c: str(c)[:20])
def test_bad_inputs(name, mutate, exc, match):
    inp = make_inputs(D=4)
    args = dict(vars(inp))
    mutate(args)
    standard = ("value", "spatial_shapes", "level_start_index", "sampling_locations")
    if name.startswith(("query", "key")) or name == "not a tensor":
        with pytest.raises(exc, match=match):
            ms_deform_attn_key_aware(args["query"], *(args[k] for k in standard), key=args["key"])
        return
    with pytest.raises(exc, match=match):
        ms_deform_attn(*(args[k] for k in standard), args["attention_weights"])
    if name != "weights points":
        with pytest.raises(exc, match=match):
            ms_deform_attn_key_aware(args["query"], *(args[k] for k in standard), key=args["key"])


@pytest.mark.parametrize("name,mutate,exc,match", _bad_cases(), ids=lambda c: str(c)[:20])
def test_references_guard_their_inputs(name, mutate, exc, match):
    """The references (run without lite_detr._C, or without kernels for the device) refuse the
    same inputs as the compiled ops' C++ boundary, with the same messages."""
    inp = make_inputs(D=4)
    args = dict(vars(inp))
    mutate(args)
    standard = ("value", "spatial_shapes", "level_start_index", "sampling_locations")
    if not name.startswith(("query", "key")) and name != "not a tensor":
        with pytest.raises(exc, match=match):
            ms_deform_attn_reference(*(args[k] for k in standard), args["attention_weights"])
    if name != "weights points":
        with pytest.raises(exc, match=match):
            ms_deform_attn_key_aware_reference(
                args["query"], *(args[k] for k in standard), key=args["key"]
            )


@needs_cuda
def test_device_mismatch_message():
    inp = make_inputs()
    with pytest.raises(ValueError, match="sampling_locations is on cuda:0 but value is on cpu"):
        ms_deform_attn(*inp.standard()[:3], inp.sampling_locations.cuda(), inp.attention_weights)


def test_meta_tensors_name_the_device():
    # issue 25, item 15: torch's "unknown device type for autocast" said nothing of the inputs
    inp = make_inputs(device="meta")
    with pytest.raises(ValueError, match="ms_deform_attn: value is on device 'meta', on which"):
        ms_deform_attn(*inp.standard())
    with pytest.raises(ValueError, match="ms_deform_attn_key_aware: query is on device 'meta'"):
        ms_deform_attn_key_aware(*inp.key_aware(with_key=True))


@needs_compiled
def test_compiled_op_checks_its_inputs():
    """The raw torch.ops entry points (used by export and compile) reject bad inputs too."""
    inp = make_inputs(D=4)
    op = torch.ops.lite_detr.ms_deform_attn
    args = list(inp.standard())
    args[0] = inp.value.transpose(1, 2)
    with pytest.raises(RuntimeError, match="lite_detr::ms_deform_attn: value must be contiguous"):
        op(*args)
    args = list(inp.standard())
    args[2] = torch.tensor([0, 19])
    with pytest.raises(ValueError, match=r"level_start_index \[0, 19\] is inconsistent with"):
        op(*args)
    args = list(inp.standard())
    args[4] = inp.attention_weights.float()
    with pytest.raises(TypeError, match="attention_weights must have dtype torch.float64"):
        op(*args)
    ka = torch.ops.lite_detr.ms_deform_attn_key_aware
    with pytest.raises(ValueError, match="key has S=3 at dim 1 but value has S=26"):
        ka(inp.query, inp.value, inp.key[:, :3], *inp.standard()[1:4])
    out, attn = ka(inp.query, inp.value, None, *inp.standard()[1:4])
    back = torch.ops.lite_detr.ms_deform_attn_key_aware_backward
    with pytest.raises(RuntimeError, match=r"attn must be the contiguous \(N, Lq, M, L\*P\)"):
        back(out, inp.query, inp.value, None, *inp.standard()[1:4], attn[..., :1].contiguous())
    with pytest.raises(ValueError, match=r"grad_output must be \(N, Lq, M \* D\)"):
        back(out[:, :1], inp.query, inp.value, None, *inp.standard()[1:4], attn)


HOSTILE_INT = st.one_of(
    st.integers(-3, 40),
    st.sampled_from([-(2**63), -(2**32), 2**31, 2**32, 2**62, 2**63 - 1]),
)


def call_raw_op(op, inp, shapes, starts, backward):
    if op == "standard":
        args = (inp.value, shapes, starts, inp.sampling_locations, inp.attention_weights)
        out = torch.ops.lite_detr.ms_deform_attn(*args)
        if backward:
            torch.ops.lite_detr.ms_deform_attn_backward(out, *args)
    else:
        args = (inp.query, inp.value, inp.key, shapes, starts, inp.sampling_locations)
        out, attn = torch.ops.lite_detr.ms_deform_attn_key_aware(*args)
        if backward:
            torch.ops.lite_detr.ms_deform_attn_key_aware_backward(out, *args, attn)
    return out


@needs_compiled
@settings(max_examples=150, deadline=None)
@given(
    levels=st.lists(st.tuples(HOSTILE_INT, HOSTILE_INT, HOSTILE_INT), min_size=1, max_size=3),
    loc=st.sampled_from([0.5, -1e30, 1e30, float("nan"), float("inf")]),
    op=st.sampled_from(["standard", "key_aware"]),
    backward=st.booleans(),
)
def test_raw_ops_survive_hostile_levels(levels, loc, op, backward):
    """The raw ops (no Python checks) with any int64 shapes and offsets, including products that
    overflow int64: either a clear ValueError or, when the levels are consistent, an output;
    never a crash (a crash fails the whole test run)."""
    L = len(levels)
    inp = make_inputs(shapes=((4, 5),) * L, D=3, dtype=torch.float32)
    inp.sampling_locations[..., 0, :] = loc
    shapes = torch.tensor([[h, w] for h, w, _ in levels], dtype=torch.int64)
    starts = torch.tensor([s for _, _, s in levels], dtype=torch.int64)
    try:
        out = call_raw_op(op, inp, shapes, starts, backward)
    except ValueError as e:
        assert "lite_detr::ms_deform_attn" in str(e)
    else:
        assert int((shapes[:, 0] * shapes[:, 1]).sum()) == inp.value.shape[1]
        assert out.shape == (inp.value.shape[0], inp.sampling_locations.shape[1], 2 * 3)


@needs_compiled
def test_overflowing_level_sizes_are_refused_on_every_path():
    """H*W overflowing int64 once wrapped past the size check and read out of bounds."""
    inp = make_inputs(shapes=((4, 5), (3, 4)), D=3, dtype=torch.float32)
    shapes = torch.tensor([[4, 5], [2**32, 2**32]])
    starts = torch.tensor([0, 20])
    message = r"spatial_shapes \[\[4, 5\], \[4294967296, 4294967296\]\] is more than the S=32"
    with pytest.raises(ValueError, match=message):
        call_raw_op("standard", inp, shapes, starts, backward=False)
    with pytest.raises(ValueError, match=message):
        ms_deform_attn(inp.value, shapes, starts, inp.sampling_locations, inp.attention_weights)
    # compiled, the same C++ check refuses them
    compiled = torch.compile(ms_deform_attn, backend="aot_eager", fullgraph=True)
    with pytest.raises(ValueError, match=message):
        compiled(inp.value, shapes, starts, inp.sampling_locations, inp.attention_weights)
    with pytest.raises(ValueError, match=message):
        ms_deform_attn_reference(
            inp.value, shapes, starts, inp.sampling_locations, inp.attention_weights
        )


# ---------------------------------------------------------------------------------------------
# Randomized shapes
# ---------------------------------------------------------------------------------------------


@needs_compiled
@settings(max_examples=30, deadline=None)
@given(
    shapes=st.lists(st.tuples(st.integers(1, 5), st.integers(1, 5)), min_size=1, max_size=3),
    N=st.integers(1, 2),
    Lq=st.integers(1, 4),
    M=st.integers(1, 3),
    D=st.integers(1, 9),
    P=st.integers(1, 3),
    op=st.sampled_from(OPS),
    seed=st.integers(0, 2**16),
)
def test_fuzz_against_reference(shapes, N, Lq, M, D, P, op, seed):
    inp = make_inputs(
        shapes=shapes,
        N=N,
        Lq=Lq,
        M=M,
        D=D,
        P=P,
        seed=seed,
        requires_grad=True,
        loc_range=(-0.3, 1.3),
    )
    (out, grads), (ref_out, ref_grads) = run_both(inp, *op, grad_seed=seed)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    for g, ref_g in zip(grads, ref_grads):
        torch.testing.assert_close(g, ref_g, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU)
# ---------------------------------------------------------------------------------------------


@needs_cuda
def test_cuda_kernels_are_built():
    assert compiled_ops_available("cuda"), "lite_detr._C was built without CUDA (FORCE_CUDA=1)"


CUDA_TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}


@needs_cuda
@pytest.mark.parametrize("op,with_key", OPS)
@pytest.mark.parametrize("shapes,D", CASES)
@pytest.mark.parametrize("dtype", list(CUDA_TOL))
def test_cuda_matches_reference(op, with_key, shapes, D, dtype):
    """CUDA kernel in `dtype` vs the float64 CPU reference on the same (rounded) inputs."""
    inp = make_inputs(shapes=shapes, D=D, dtype=dtype, device="cuda", requires_grad=True, seed=D)
    ref = OpInputs(
        *(
            t.detach().cpu().double().requires_grad_() if t.is_floating_point() else t.cpu()
            for t in vars(inp).values()
        )
    )
    (out, grads), _ = run_both(inp, op, with_key)
    _, (ref_out, ref_grads) = run_both(ref, op, with_key)
    assert out.dtype == dtype and out.is_cuda
    assert max_rel_err(out.cpu().double(), ref_out) < CUDA_TOL[dtype]
    for g, ref_g in zip(grads, ref_grads):
        # low precision gradients go through rounded grad_output and weights: looser
        tol = CUDA_TOL[dtype] * (1 if dtype in (torch.float32, torch.float64) else 4)
        assert max_rel_err(g.cpu().double(), ref_g) < tol


@needs_cuda
@pytest.mark.parametrize("op,with_key", OPS)
def test_cuda_gradcheck_and_edge_points(op, with_key):
    inp = make_inputs(
        shapes=((3, 4), (2, 3)), N=1, Lq=2, M=2, D=3, P=2, device="cuda", requires_grad=True
    )
    with torch.no_grad():
        inp.sampling_locations[0, 0, 0, 0, 0] = float("nan")
        inp.sampling_locations[0, 1, 1, 1, 1, 0] = 0.0  # on the border
    if op == "standard":
        assert torch.autograd.gradcheck(ms_deform_attn, inp.standard())
    else:
        assert torch.autograd.gradcheck(ms_deform_attn_key_aware, inp.key_aware(with_key))


@needs_cuda
@pytest.mark.parametrize("op,with_key", OPS)
def test_cuda_opcheck_and_large_head_dim(op, with_key):
    inp = make_inputs(shapes=((5, 6), (2, 3)), Lq=3, D=96, device="cuda", requires_grad=True)
    (out, grads), _ = run_both(inp, op, with_key)
    cpu = OpInputs(
        *(t.detach().cpu().requires_grad_(t.is_floating_point()) for t in vars(inp).values())
    )
    (ref_out, ref_grads), _ = run_both(cpu, op, with_key)
    assert max_rel_err(out.cpu(), ref_out) < 1e-10
    for g, ref_g in zip(grads, ref_grads):
        assert max_rel_err(g.cpu(), ref_g) < 1e-10
    if op == "standard":
        torch.library.opcheck(torch.ops.lite_detr.ms_deform_attn.default, inp.standard())
    else:
        args = inp.key_aware(True)
        key = args[-1] if with_key else None
        torch.library.opcheck(
            torch.ops.lite_detr.ms_deform_attn_key_aware.default, args[:2] + (key,) + args[2:-1]
        )


@pytest.mark.parametrize("op,with_key", OPS)
def test_autocast_computes_in_float32(op, with_key):
    """Under autocast, bfloat16 values beside float32 locations (what autocast's linear layers
    give the attention) are accepted and computed in float32."""
    inp = make_inputs(dtype=torch.float32)
    low = dataclasses.replace(inp)
    low.value = inp.value.bfloat16()
    low.query = inp.query.bfloat16()
    fn = ms_deform_attn if op == "standard" else ms_deform_attn_key_aware
    args = low.standard() if op == "standard" else low.key_aware(with_key)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fn(*args)
    expected_args = tuple(a.float() if a.is_floating_point() else a for a in args)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, fn(*expected_args))
    with pytest.raises(TypeError, match="must have dtype torch.bfloat16"):
        fn(*args)  # outside autocast the dtypes must agree
