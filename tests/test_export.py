"""lite_detr.export: the tensor-only inference path equals the detector's forward; torch.export
captures it with a dynamic input size (the ops as lite_detr:: nodes); torch.compile runs it."""

import pytest
import torch
from detectron2.config import instantiate

from lite_detr.engine import load_config
from lite_detr.export import ExportError, InferenceDetector, check_input_size, export_program

from .conftest import SHAPES_CFG, TINY_MODEL


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = load_config(SHAPES_CFG, TINY_MODEL + ["model.decoder.num_layers=1"])
    return instantiate(cfg.model).eval()


def _image(h, w, seed):
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed)) * 255


def _assert_same(actual, expected):
    for a, e in zip(actual, expected):
        assert a.shape == e.shape
        torch.testing.assert_close(a, e, atol=1e-4, rtol=1e-5)


def test_inference_detector_equals_forward(model):
    wrapper = InferenceDetector(model)
    for h, w in [(128, 160), (96, 200)]:
        image = _image(h, w, 0)
        with torch.no_grad():
            boxes, scores, labels = wrapper(image)
            inst = model([{"image": image, "height": h, "width": w}])[0]["instances"]
        assert torch.equal(boxes, inst.pred_boxes.tensor)
        assert torch.equal(scores, inst.scores)
        assert torch.equal(labels, inst.pred_classes)


def test_torch_export_dynamic_size(model):
    program = export_program(model, 128, 160)
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert "lite_detr.ms_deform_attn_key_aware.default" in targets
    # H and W stay symbols (not specialized to 128 x 160)
    image_shape = next(
        n for n in program.graph.nodes if n.op == "placeholder" and n.name == "image"
    )
    h, w = image_shape.meta["val"].shape[1:]
    assert not isinstance(h, int) and not isinstance(w, int)
    wrapper = InferenceDetector(model)
    for size, seed in [((128, 160), 1), ((96, 224), 2), ((200, 136), 3)]:
        image = _image(*size, seed)
        with torch.no_grad():
            _assert_same(program.module()(image), wrapper(image))


def test_torch_compile_matches_eager(model):
    # aot_eager: dynamo + AOTAutograd capture of the whole detector without inductor's (slow on
    # this CPU) code generation; benchmarks/bench_export.py times the inductor build
    torch._dynamo.reset()
    compiled = torch.compile(InferenceDetector(model), backend="aot_eager", dynamic=True)
    wrapper = InferenceDetector(model)
    for size, seed in [((128, 160), 4), ((96, 224), 5)]:
        image = _image(*size, seed)
        with torch.no_grad():
            _assert_same(compiled(image), wrapper(image))


def test_input_size_checks(model):
    model.size_divisibility = 32
    try:
        with pytest.raises(ExportError, match="multiple of the model's size divisibility 32"):
            check_input_size(model, 100, 128)
        check_input_size(model, 96, 128)
    finally:
        model.size_divisibility = 0
    with pytest.raises(ExportError, match="too small"):
        export_program(model, 16, 16)
    with pytest.raises(ExportError, match="cannot export Linear"):
        InferenceDetector(torch.nn.Linear(2, 2))
