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
    compiled = torch.compile(InferenceDetector(model), backend="aot_eager")
    wrapper = InferenceDetector(model)
    image = _image(96, 128, 4)
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


def test_level_sizes_as_python_ints_or_tensor():
    from lite_detr.modeling.encoders import get_reference_points
    from lite_detr.modeling.level_shapes import level_shapes
    from lite_detr.modeling.query_selection import gen_encoder_output_proposals

    sizes = [(5, 7), (3, 4), (1, 2)]
    tensor = torch.tensor(sizes)
    assert level_shapes(tensor) == sizes == level_shapes(sizes)
    ratios = torch.rand(2, 3, 2) * 0.5 + 0.5
    assert torch.equal(get_reference_points(tensor, ratios), get_reference_points(sizes, ratios))
    memory = torch.randn(2, 35 + 12 + 2, 8)
    mask = torch.zeros(2, 49, dtype=torch.bool)
    mask[1, 30:35] = True
    for a, b in zip(
        gen_encoder_output_proposals(memory, mask, tensor),
        gen_encoder_output_proposals(memory, mask, sizes),
    ):
        assert torch.equal(a, b)


def test_compare_detections_tolerates_ties_only():
    from lite_detr.export import compare_detections

    boxes = torch.tensor([[0.0, 0, 10, 10], [5, 5, 20, 20], [1, 1, 2, 2], [3, 3, 9, 9]])
    scores = torch.tensor([0.9, 0.5, 0.5 - 1e-6, 0.1])
    labels = torch.tensor([1, 2, 3, 4])
    expected = (boxes, scores, labels)
    # ties within the tolerance swap places; tiny numeric differences
    order = torch.tensor([0, 2, 1, 3])
    swapped = (boxes[order] + 0.01, scores[order] + 2e-5, labels[order])
    assert compare_detections(expected, swapped, (64, 64))["matched"] == 4
    # at the cut-off: the last detection replaced by one scoring within the tolerance
    cut = (boxes.clone(), scores.clone(), labels.clone())
    cut[0][3] = torch.tensor([40.0, 40, 50, 50])
    cut[1][3] = 0.1 + 5e-5
    cut[2][3] = 7
    assert compare_detections(expected, cut, (64, 64))["matched"] == 3
    for bad in [
        (boxes, scores, torch.tensor([1, 5, 3, 4])),  # a label
        (boxes + torch.tensor([0, 0, 0.1, 0]), scores, labels),  # a box by 0.1 px
        (boxes, scores + torch.tensor([0, 3e-4, 0, 0]), labels),  # a score
        (boxes[:3], scores[:3], labels[:3]),  # one detection fewer
        (cut[0][[3, 1, 2, 0]], cut[1], cut[2]),  # the replaced box above the cut-off
    ]:
        with pytest.raises(ExportError, match="differ from PyTorch's at 64x64"):
            compare_detections(expected, bad, (64, 64))


def test_return_selection(model):
    from lite_detr.export import InferenceDetector

    image = _image(128, 160, 5)
    with torch.no_grad():
        plain = InferenceDetector(model)(image)
        *dets, scores, selected = InferenceDetector(model, return_selection=True)(image)
    for a, b in zip(dets, plain):
        assert torch.equal(a, b)
    assert scores.shape == (sum(h * w for h, w in _level_sizes(model, image)),)
    assert torch.equal(selected, torch.topk(scores, model.num_queries)[1])


def _level_sizes(model, image):
    with torch.no_grad():
        feats = model.neck(model.backbone(image[None]))
    return [tuple(f.shape[-2:]) for f in feats]


def test_selection_changes():
    from lite_detr.export import selection_changes

    scores = torch.tensor([5.0, 4.0, 3.0, 2.999, 1.0], dtype=torch.float64)
    selected = torch.tensor([0, 1, 2])
    same = selection_changes(scores, selected, scores, selected)
    assert same == {"score_diff": 0.0, "swapped": 0, "moved": 0, "max_gap": 0.0}
    # token 3 rounds above token 2 at the cut-off: the other runtime selects it instead
    other = scores.clone()
    other[2], other[3] = 2.9994, 2.9996
    cut = selection_changes(scores, selected, other, torch.tensor([0, 1, 3]))
    assert cut["swapped"] == 1 and cut["moved"] == 1
    assert cut["max_gap"] == pytest.approx(0.001) and cut["score_diff"] == pytest.approx(6e-4)
    # two selected tokens in the other order
    order = selection_changes(scores, selected, scores, torch.tensor([1, 0, 2]))
    assert order["swapped"] == 0 and order["moved"] == 2 and order["max_gap"] == 1.0


def _decode(model, image, selection):
    """PyTorch's detections when the queries take the proposals ``selection`` (Q,)."""
    from lite_detr.export import _detect, _encode

    with torch.no_grad():
        enc = _encode(model, image)
        logits, coords = model.proposals(enc)
        return _detect(model, enc, logits, coords, selection[None], image.shape[-2:])


def test_compare_with_pytorch_excuses_only_selection_ties(model):
    """A runtime whose rounding flips two proposals of the query selection: excused only when
    its proposal scores are within the tolerance of PyTorch's and its detections are PyTorch's
    decoding of its selection."""
    from lite_detr.export import compare_detections, compare_with_pytorch, describe_comparison

    image = _image(128, 160, 6)
    with torch.no_grad():
        *dets, scores, selected = InferenceDetector(model, return_selection=True)(image)
    exact = compare_with_pytorch(model, image, dets)
    assert exact["selection"] is None and exact["matched"] == exact["detections"]
    assert describe_comparison(exact, model.num_queries).startswith("30/30 equal")

    # the last selected proposal and the best left-out one trade places in the other runtime
    rest = torch.ones_like(scores, dtype=torch.bool)
    rest[selected] = False
    best_out = int(torch.where(rest, scores, float("-inf")).argmax())
    last = int(selected[-1])
    gap = float(scores[last] - scores[best_out])
    other_scores = scores.clone()
    other_scores[last], other_scores[best_out] = scores[best_out], scores[last]
    other_selected = torch.cat([selected[:-1], selected.new_tensor([best_out])])
    flipped = _decode(model, image, other_selected)
    with pytest.raises(ExportError):  # the flip changes the detections
        compare_detections(dets, flipped, (128, 160))
    with pytest.raises(ExportError, match=r"at 128x160: .* 0\.05 px$"):
        compare_with_pytorch(model, image, flipped)  # no selection to explain it
    selection = (other_scores, other_selected)
    tie = compare_with_pytorch(model, image, flipped, selection=selection, tolerance=2 * gap)
    assert tie["matched"] < tie["detections"]
    sel = tie["selection"]
    assert sel["matched"] == sel["detections"] and sel["max_score_diff"] == 0
    assert (sel["swapped"], sel["moved"]) == (1, 1)
    assert sel["max_gap"] == pytest.approx(gap) and sel["score_diff"] == pytest.approx(gap)
    assert "swapped in at the cut-off" in describe_comparison(tie, model.num_queries)
    # the same flip with proposal scores further apart than the tolerance
    with pytest.raises(ExportError, match="proposal scores differ from PyTorch's"):
        compare_with_pytorch(model, image, flipped, selection=selection, tolerance=gap / 2)
    # a box 0.1 px off on top of the flip: nothing but the selection is excused
    shifted = (flipped[0] + torch.tensor([0.1, 0, 0, 0]), *flipped[1:])
    with pytest.raises(ExportError, match="even decoding ONNX Runtime's top-30 query selection"):
        compare_with_pytorch(model, image, shifted, selection=selection, tolerance=2 * gap)
    # a difference with the same selection as PyTorch's
    with pytest.raises(ExportError, match="with the same top-30 query selection"):
        compare_with_pytorch(model, image, (shifted[0], *dets[1:]), selection=(scores, selected))
