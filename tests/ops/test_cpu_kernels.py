"""The two builds of the CPU kernels (baseline and AVX2 + FMA, chosen by LITE_DETR_CPU_KERNELS)
and the spatial query order of the kernels when queries are few (a decoder's)."""

import os
import platform
import subprocess
import sys

import pytest
import torch

from lite_detr.ops import (
    compiled_ops_available,
    cpu_kernels,
    ms_deform_attn,
    ms_deform_attn_key_aware,
)
from tests.ops.test_ms_deform_attn import OPS, make_inputs, max_rel_err, run_both

pytestmark = pytest.mark.skipif(not compiled_ops_available(), reason="lite_detr._C is not built")


def cpu_has_avx2_fma() -> bool:
    if platform.machine() != "x86_64" or not os.path.exists("/proc/cpuinfo"):
        return False
    flags = open("/proc/cpuinfo").read().split()
    return "avx2" in flags and "fma" in flags


def run_python(code: str, kernels: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, LITE_DETR_CPU_KERNELS=kernels)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True
    )


def test_the_selected_build_is_reported_and_can_be_forced():
    assert cpu_kernels() == torch.ops.lite_detr.cpu_kernels()
    code = "import torch, lite_detr.ops; print(torch.ops.lite_detr.cpu_kernels())"
    if cpu_has_avx2_fma() and platform.system() == "Linux":  # GCC on x86-64 builds AVX2 kernels
        picked = run_python(code, "auto")  # whatever this process was started with
        assert picked.returncode == 0, picked.stderr
        assert picked.stdout.split()[-1] == "avx2"
    forced = run_python(code, "baseline")
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.split()[-1] == "baseline"


def test_an_unknown_build_is_one_clear_error():
    code = (
        "import torch\n"
        "from tests.ops.test_ms_deform_attn import make_inputs\n"
        "from lite_detr.ops import ms_deform_attn\n"
        "try:\n"
        "    ms_deform_attn(*make_inputs().standard())\n"
        "except RuntimeError as e:\n"
        "    print('ERROR', str(e).splitlines()[0])\n"
    )
    result = run_python(code, "sse9")
    assert result.returncode == 0, result.stderr
    assert "LITE_DETR_CPU_KERNELS=sse9 is not one of auto, baseline, avx2" in result.stdout


# few queries on a large level (the queries are swept in spatial order) and many on small maps
REGIMES = {
    "sparse": {"shapes": ((40, 50), (10, 12)), "Lq": 6},
    "dense": {"shapes": ((8, 9), (4, 5)), "Lq": 60},
}


def results(regime: str):
    """Outputs and gradients of the three op forms, compiled and reference, in float32."""
    inp = make_inputs(N=2, M=3, D=32, P=4, dtype=torch.float32, **REGIMES[regime])
    for t in vars(inp).values():
        t.requires_grad_(t.is_floating_point())
    return [run_both(inp, op, with_key) for op, with_key in OPS]


@pytest.mark.skipif(torch.ops.lite_detr.cpu_kernels() != "avx2", reason="no AVX2 build here")
@pytest.mark.parametrize("regime", sorted(REGIMES))
def test_baseline_and_avx2_builds_agree(regime, tmp_path):
    """Both builds match the reference; they differ from each other by rounding only."""
    saved = tmp_path / "baseline.pt"
    code = (
        "import torch\n"
        "from tests.ops.test_cpu_kernels import results\n"
        "assert torch.ops.lite_detr.cpu_kernels() == 'baseline'\n"
        f"runs = results({regime!r})\n"
        "kept = [(r[0][0].detach(), [g.detach() for g in r[0][1]]) for r in runs]\n"
        f"torch.save(kept, {str(saved)!r})\n"
    )
    result = run_python(code, "baseline")
    assert result.returncode == 0, result.stderr
    baseline = torch.load(saved)
    for (compiled, reference), base in zip(results(regime), baseline):
        for x, b, r in zip(
            [compiled[0], *compiled[1]], [base[0], *base[1]], [reference[0], *reference[1]]
        ):
            assert max_rel_err(x, r) < 1e-5 and max_rel_err(b, r) < 1e-5
            assert max_rel_err(x, b) < 1e-5


@pytest.mark.parametrize("op,with_key", OPS)
def test_query_order_changes_no_query_result(op, with_key):
    """Few queries at random places of a large level are swept in spatial order: each query's
    output, and its gradients, are those of the same query given in another order (bitwise), and
    the gradients summed over queries match the reference."""
    inp = make_inputs(
        N=2,
        M=3,
        D=32,
        P=4,
        dtype=torch.float32,
        loc_range=(0.0, 1.0),
        shapes=((60, 70), (30, 35)),
        Lq=12,
    )
    # each query samples near its own reference point, as a decoder's do
    refs = torch.rand(2, 12, 1, 1, 1, 2, generator=torch.Generator().manual_seed(3))
    inp.sampling_locations = (refs + 0.02 * (inp.sampling_locations - 0.5)).contiguous()
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(4))
    shuffled = make_inputs(
        N=2, M=3, D=32, P=4, dtype=torch.float32, shapes=((60, 70), (30, 35)), Lq=12
    )
    for name in ("sampling_locations", "attention_weights", "query"):
        setattr(shuffled, name, getattr(inp, name)[:, perm].contiguous())
    for name in ("value", "key"):
        setattr(shuffled, name, getattr(inp, name))
    for t in (*vars(inp).values(), *vars(shuffled).values()):
        t.requires_grad_(t.is_floating_point())
    (out, grads), (ref_out, ref_grads) = run_both(inp, op, with_key, grad_seed=5)
    # the gradient of the output is shuffled with the queries
    grad_out = torch.randn(
        out.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64
    ).to(out)
    args = shuffled.standard() if op == "standard" else shuffled.key_aware(with_key)
    fn = ms_deform_attn if op == "standard" else ms_deform_attn_key_aware
    s_out = fn(*args)
    wrt = (
        (shuffled.value, shuffled.sampling_locations, shuffled.attention_weights)
        if op == "standard"
        else (shuffled.query, shuffled.value, shuffled.sampling_locations)
        + ((shuffled.key,) if with_key else ())
    )
    s_grads = torch.autograd.grad(s_out, wrt, grad_out[:, perm])
    assert torch.equal(s_out, out[:, perm])
    assert max_rel_err(out, ref_out) < 1e-5
    for g, s_g, ref_g, t in zip(grads, s_grads, ref_grads, wrt):
        assert max_rel_err(g, ref_g) < 1e-5
        if t.shape[1] == 12:  # a per-query input: bitwise the same, shuffled
            assert torch.equal(s_g, g[:, perm])
        else:  # value, key: summed over the queries in another order
            assert max_rel_err(s_g, g) < 1e-5


@pytest.mark.parametrize("op,with_key", OPS)
def test_32_channel_kernels_with_points_outside_the_map(op, with_key):
    """The AVX2 build has kernels of its own for 32 float channels (the key-aware forward and
    first backward pass when the keys are the values, the standard forward): points wholly
    outside a map, on its border (some corners outside) and NaN / Inf coordinates give the
    reference's outputs and gradients, and zero gradient for the points that contribute nothing."""
    inp = make_inputs(N=2, M=3, D=32, P=4, dtype=torch.float32, Lq=7, shapes=((6, 9), (3, 5)))
    with torch.no_grad():
        loc = inp.sampling_locations  # (N, Lq, M, L, P, 2)
        loc[0, 0, 0, 0, 0] = torch.tensor([1.7, 0.5])  # outside: no corner inside
        loc[0, 1, 1, 1, 2] = torch.tensor([-0.05, 0.98])  # on the border: some corners inside
        loc[1, 2, 2, 0, 3] = torch.tensor([float("nan"), 0.5])
        loc[1, 3, 0, 1, 1] = torch.tensor([0.5, float("inf")])
        loc[1, 4, 1] = 2.5  # every point of one head outside
    for t in vars(inp).values():
        t.requires_grad_(t.is_floating_point())
    (out, grads), (ref_out, ref_grads) = run_both(inp, op, with_key)
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)
    assert max_rel_err(out, ref_out) < 1e-5
    for g, ref_g in zip(grads, ref_grads):
        assert max_rel_err(g, ref_g) < 1e-5
    grad_loc = grads[1] if op == "standard" else grads[2]
    for index in ((0, 0, 0, 0, 0), (1, 2, 2, 0, 3), (1, 3, 0, 1, 1), (1, 4, 1)):
        assert grad_loc[index].abs().max() == 0
    assert grad_loc[0, 1, 1, 1, 2].abs().max() > 0  # the border point still has a gradient
