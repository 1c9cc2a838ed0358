"""The ONNX decomposition of both ops (lite_detr.ops.onnx_translation), run by ONNX Runtime, vs the
compiled kernels: random inputs with points outside the maps, NaN/Inf points, and level sizes and
query counts other than the ones the graph was exported with."""

import pytest
import torch

from lite_detr.ops import ms_deform_attn, ms_deform_attn_key_aware

from .test_ms_deform_attn import make_inputs, needs_compiled

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

pytestmark = needs_compiled

# the sizes the graphs are exported at, then other sizes that the same file must serve
EXPORT_SHAPES = ((6, 5), (3, 3))
RUN_CASES = [
    (EXPORT_SHAPES, 5),
    (((9, 4), (2, 7)), 11),
    (((1, 1), (17, 3)), 1),
]


class _Standard(torch.nn.Module):
    def forward(self, value, spatial_shapes, level_start_index, locations, weights):
        return ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights)


class _KeyAware(torch.nn.Module):
    def forward(self, query, value, spatial_shapes, level_start_index, locations, key=None):
        return ms_deform_attn_key_aware(
            query, value, spatial_shapes, level_start_index, locations, key
        )


def _inputs(shapes, num_queries, seed):
    inp = make_inputs(
        shapes=shapes, Lq=num_queries, N=2, M=2, D=4, P=3, dtype=torch.float32, seed=seed
    )
    loc = inp.sampling_locations
    # non-finite and far-away points contribute zero
    loc[0, 0, 0, 0, 0, 0] = float("nan")
    loc[1, -1, 1, -1, -1, 1] = float("inf")
    loc[0, -1, 0, 0, 1] = torch.tensor([5.0, -3.0])
    return inp


def _args(inp, op):
    if op == "standard":
        return inp.standard()
    return inp.key_aware(op == "key_aware_with_key")


def _export(op, path):
    from lite_detr.ops.onnx_translation import ONNX_OPSET, onnx_translation_table

    inp = _inputs(EXPORT_SHAPES, 5, seed=0)
    S, Lq = torch.export.Dim("S"), torch.export.Dim("Lq")
    if op == "standard":
        module, dynamic = _Standard(), ({1: S}, None, None, {1: Lq}, {1: Lq})
    else:
        with_key = op == "key_aware_with_key"
        module = _KeyAware()
        dynamic = ({1: Lq}, {1: S}, None, None, {1: Lq}) + (({1: S},) if with_key else ())
    program = torch.onnx.export(
        module.eval(),
        _args(inp, op),
        dynamo=True,
        opset_version=ONNX_OPSET,
        custom_translation_table=onnx_translation_table(),
        dynamic_shapes=dynamic,
        verbose=False,
    )
    program.save(str(path))
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("op", ["standard", "key_aware", "key_aware_with_key"])
def test_onnx_decomposition_matches_compiled_op(op, tmp_path):
    model = _export(op, tmp_path / f"{op}.onnx")
    # standard ONNX operators only: the exported file needs no plug-in
    domains = {node.domain for node in model.graph.node}
    assert domains <= {"", "ai.onnx"}, domains
    assert model.opset_import[0].version >= 17
    op_types = {node.op_type for node in model.graph.node}
    assert "GridSample" in op_types
    session = ort.InferenceSession(str(tmp_path / f"{op}.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    for seed, (shapes, num_queries) in enumerate(RUN_CASES, start=1):
        args = _args(_inputs(shapes, num_queries, seed), op)
        fn = ms_deform_attn if op == "standard" else ms_deform_attn_key_aware
        expected = fn(*args)
        assert torch.isfinite(expected).all()
        (actual,) = session.run(
            [session.get_outputs()[0].name], dict(zip(names, [a.numpy() for a in args]))
        )
        assert actual.shape == tuple(expected.shape)
        torch.testing.assert_close(torch.from_numpy(actual), expected, atol=1e-5, rtol=1e-5)
