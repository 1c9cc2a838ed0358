"""CUDA-only tests of lite_detr.ops beyond the reference parity of test_ms_deform_attn.py: CUDA vs
CPU kernels, run-to-run determinism, the device guard, 64-bit indexing, memory safety with
inconsistent level tensors. All skip without a GPU (``make gpu-check`` runs them)."""

import pytest
import torch

from lite_detr.ops import compiled_ops_available, ms_deform_attn, ms_deform_attn_key_aware

from .test_ms_deform_attn import CASES, OPS, OpInputs, make_inputs, max_rel_err, run_both

needs_cuda = pytest.mark.skipif(
    not (torch.cuda.is_available() and compiled_ops_available("cuda")),
    reason="needs a CUDA GPU and lite_detr._C built with CUDA",
)
needs_two_gpus = pytest.mark.skipif(
    not (torch.cuda.is_available() and torch.cuda.device_count() >= 2), reason="needs 2 GPUs"
)


def to_device(inp: OpInputs, device, dtype=None) -> OpInputs:
    def move(t):
        t = t.detach().to(device)
        if t.is_floating_point():
            t = t.to(dtype or t.dtype).requires_grad_()
        return t

    return OpInputs(*(move(t) for t in vars(inp).values()))


@needs_cuda
@pytest.mark.parametrize("op,with_key", OPS)
@pytest.mark.parametrize("shapes,D", CASES)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_cuda_matches_cpu_kernels(op, with_key, shapes, D, dtype, tol):
    """Both compiled kernels on the same inputs: outputs and every gradient agree."""
    cpu = make_inputs(shapes=shapes, D=D, dtype=dtype, requires_grad=True, seed=D + 7)
    gpu = to_device(cpu, "cuda")
    (out_c, grads_c), _ = run_both(cpu, op, with_key)
    (out_g, grads_g), _ = run_both(gpu, op, with_key)
    assert max_rel_err(out_g.cpu(), out_c) < tol
    for g_g, g_c in zip(grads_g, grads_c):
        assert max_rel_err(g_g.cpu(), g_c) < tol * 10


@needs_cuda
@pytest.mark.parametrize("op,with_key", OPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_forward_is_deterministic(op, with_key, dtype):
    """The forward (no atomics) is bitwise reproducible; so are the gradients w.r.t. locations,
    attention weights and query, which are reduced in a fixed order (value/key gradients are
    scattered with atomicAdd and only agree to rounding)."""
    inp = make_inputs(shapes=((16, 20), (8, 10), (4, 5)), Lq=300, M=8, D=32, P=4, dtype=dtype)
    inp = to_device(inp, "cuda")
    inp.sampling_locations.detach().uniform_(0.3, 0.4)  # crowded: many scatters on one pixel
    first = run_both(inp, op, with_key)[0]
    for _ in range(2):
        out, grads = run_both(inp, op, with_key)[0]
        assert torch.equal(out, first[0])
        ordered = (1, 2) if op == "standard" else (0, 2)  # (locations, weights) / (query, loc)
        for i in ordered:
            assert torch.equal(grads[i], first[1][i])
        for i in set(range(len(grads))) - set(ordered):
            assert max_rel_err(grads[i].double(), first[1][i].double()) < (
                1e-5 if dtype == torch.float32 else 1e-2
            )


@needs_cuda
@needs_two_gpus
@pytest.mark.parametrize("op,with_key", OPS)
def test_second_gpu_gives_the_same_results(op, with_key):
    """The kernels launch on the inputs' device (device guard), not on the current device."""
    inp = make_inputs(shapes=((6, 9), (3, 5)), Lq=20, M=4, D=32, dtype=torch.float32)
    out0, grads0 = run_both(to_device(inp, "cuda:0"), op, with_key)[0]
    with torch.cuda.device(0):  # current device 0, tensors on device 1
        out1, grads1 = run_both(to_device(inp, "cuda:1"), op, with_key)[0]
    assert out1.device == torch.device("cuda:1")
    assert torch.equal(out1.cpu(), out0.cpu())
    for g1, g0 in zip(grads1, grads0):
        assert g1.device == torch.device("cuda:1")
        torch.testing.assert_close(g1.cpu(), g0.cpu())


@needs_cuda
def test_64_bit_indexing():
    """N * Lq * M * D > 2**31 output elements (and more sampling terms): rows at the end of the
    output, whose offsets overflow int32, equal the reference on those rows."""
    free, _ = torch.cuda.mem_get_info()
    if free < 12 * 2**30:
        pytest.skip("needs 12 GiB of free GPU memory")
    N, Lq, M, D, P = 1, 2**23 + 5, 8, 32, 1  # output: 2**31 + 1280 float16 elements
    shapes = torch.tensor([[16, 16]], device="cuda")
    starts = torch.zeros(1, dtype=torch.int64, device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(0)
    value = torch.randn(N, 256, M, D, device="cuda", generator=gen, dtype=torch.float16)
    loc = torch.rand(N, Lq, M, 1, P, 2, device="cuda", generator=gen, dtype=torch.float16)
    weights = torch.rand(N, Lq, M, 1, P, device="cuda", generator=gen, dtype=torch.float16)
    out = ms_deform_attn(value, shapes, starts, loc, weights)
    tail = slice(Lq - 64, Lq)
    expected = ms_deform_attn(value, shapes, starts, loc[:, tail].clone(), weights[:, tail].clone())
    assert torch.equal(out[:, tail], expected)
    del out
    query = torch.randn(N, Lq, M, D, device="cuda", generator=gen, dtype=torch.float16)
    out = ms_deform_attn_key_aware(query, value, shapes, starts, loc)
    expected = ms_deform_attn_key_aware(
        query[:, tail].clone(), value, shapes, starts, loc[:, tail].clone()
    )
    assert torch.equal(out[:, tail], expected)


@needs_cuda
@pytest.mark.parametrize("op,with_key", OPS)
@pytest.mark.parametrize(
    "shapes,starts",
    [
        ([[4, 5], [2**32, 2**32]], [0, 20]),  # H*W overflows int64
        ([[4, 5], [3, 4]], [0, 10**12]),  # a level starting far beyond S
        ([[4, 5], [3, 4]], [0, -7]),  # a negative start
        ([[40, 50], [3, 4]], [0, 20]),  # more tokens than value holds
    ],
)
def test_raw_cuda_ops_never_read_out_of_bounds(op, with_key, shapes, starts):
    """The raw ops get no host-side level check on CUDA (it would synchronise): the kernels skip
    levels that do not fit in value, and the process survives with a finite result."""
    inp = to_device(make_inputs(shapes=((4, 5), (3, 4)), D=8, dtype=torch.float32), "cuda")
    bad_shapes = torch.tensor(shapes, dtype=torch.int64, device="cuda")
    bad_starts = torch.tensor(starts, dtype=torch.int64, device="cuda")
    with torch.no_grad():
        if op == "standard":
            out = torch.ops.lite_detr.ms_deform_attn(
                inp.value, bad_shapes, bad_starts, inp.sampling_locations, inp.attention_weights
            )
        else:
            out, _ = torch.ops.lite_detr.ms_deform_attn_key_aware(
                inp.query,
                inp.value,
                inp.key if with_key else None,
                bad_shapes,
                bad_starts,
                inp.sampling_locations,
            )
    torch.cuda.synchronize()
    assert torch.isfinite(out).all()
