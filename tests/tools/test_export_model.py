"""tools/export_model.py: ONNX export of a tiny Lite-DINO, run by ONNX Runtime at several input
sizes from one file and compared with the PyTorch model; bad input gives one clear error and no
output file."""

import os

import pytest
import torch
from detectron2.config import instantiate

from lite_detr.engine import build_checkpointer, load_config
from lite_detr.export import (
    BOX_TOLERANCE,
    PROPOSAL_TOLERANCE,
    SCORE_TOLERANCE,
    ExportError,
    InferenceDetector,
    OnnxDetector,
    compare_detections,
    describe_comparison,
    min_input_side,
    onnx_session,
    optimized_onnx_path,
    read_selection,
    selection_changes,
    selection_session,
    write_optimized_onnx,
)

from ..conftest import TINY_MODEL
from .conftest import ROOT, SHAPES_CFG, load_tool

ort = pytest.importorskip("onnxruntime")

# a smaller model than TINY (one decoder layer): the export traces every layer
EXPORT_TINY = TINY_MODEL + ["model.decoder.num_layers=1"]


def _save_weights(path, overrides=(), seed=0):
    torch.manual_seed(seed)
    model = instantiate(load_config(SHAPES_CFG, EXPORT_TINY + list(overrides)).model).eval()
    # non-zero box deltas and varied class biases so that detections differ between sizes
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    build_checkpointer(model, str(path.parent)).save(path.stem)
    return str(path), model


def _run(args):
    tool = load_tool("export_model")
    return tool.main(args)


def _pytorch_detections(model, image):
    h, w = image.shape[-2:]
    with torch.no_grad():
        inst = model([{"image": image, "height": h, "width": w}])[0]["instances"]
    return inst.pred_boxes.tensor, inst.scores, inst.pred_classes


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    """The tool's ONNX file of the tiny model: (file, its folder, the model, the tool's report)."""
    tmp_path = tmp_path_factory.mktemp("export")
    weights, model = _save_weights(tmp_path / "tiny.pth")
    out = tmp_path / "tiny.onnx"
    report = _run(
        ["--config-file", SHAPES_CFG, "--weights", weights, "--format", "onnx"]
        + ["--output", str(out), "--input-size", "128", "160", "--check-size", "96", "224"]
        + EXPORT_TINY
    )
    return out, tmp_path, model, report


def test_export_onnx_runs_at_several_sizes(tiny_export):
    out, tmp_path, model, report = tiny_export
    assert [r["size"] for r in report] == [(128, 160), (96, 224)]
    # the tiny model's detections equal PyTorch's strictly (no selection tie excused)
    assert all(r["selection"] is None and r["matched"] == r["detections"] for r in report)
    assert out.is_file() and not list(tmp_path.glob(".tmp-*"))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["boxes", "scores", "labels"]
    g = torch.Generator().manual_seed(123)
    # the export size, the tool's check size, and a size that neither used
    for h, w in [(128, 160), (96, 224), (200, 120)]:
        image = torch.rand(3, h, w, generator=g) * 255
        boxes, scores, labels = _pytorch_detections(model, image)
        o_boxes, o_scores, o_labels = session.run(None, {"image": image.numpy()})
        assert o_boxes.shape == tuple(boxes.shape) == (30, 4)
        assert torch.equal(torch.from_numpy(o_labels).long(), labels)
        torch.testing.assert_close(torch.from_numpy(o_scores), scores, atol=1e-4, rtol=0)
        torch.testing.assert_close(torch.from_numpy(o_boxes), boxes, atol=0.05, rtol=0)
    # the file's query selection, read out without changing its detections, is PyTorch's
    selection = selection_session(str(out), model.num_queries)
    o_scores, o_selected = read_selection(selection, image, (o_boxes, o_scores, o_labels))
    with torch.no_grad():
        *_, scores, selected = InferenceDetector(model, return_selection=True)(image)
    changes = selection_changes(scores, selected, torch.from_numpy(o_scores[0]), o_selected[0])
    assert changes["score_diff"] <= PROPOSAL_TOLERANCE and changes["swapped"] == 0


def test_export_drops_detections_of_ranking_only_rows(tmp_path):
    """A model with ranking-only class rows (as converted release weights have) exports: the
    file ranks over all rows and returns only the detections of the real classes, as PyTorch."""
    ranking = ["model.num_ranking_only_classes=3"]
    weights, model = _save_weights(tmp_path / "ranked.pth", ranking)
    out = tmp_path / "ranked.onnx"
    report = _run(
        ["--config-file", SHAPES_CFG, "--weights", weights, "--format", "onnx"]
        + ["--output", str(out), "--input-size", "128", "160", "--check-size", "96", "224"]
        + EXPORT_TINY
        + ranking
    )
    assert all(r["matched"] == r["detections"] for r in report)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    image = torch.rand(3, 200, 120, generator=torch.Generator().manual_seed(7)) * 255
    boxes, scores, labels = _pytorch_detections(model, image)
    # some of the top-30 belonged to the 3 ranking-only rows and were dropped
    assert 0 < len(scores) < 30 and int(labels.max()) < model.num_classes
    o_boxes, o_scores, o_labels = session.run(None, {"image": image.numpy()})
    assert torch.equal(torch.from_numpy(o_labels).long(), labels)
    torch.testing.assert_close(torch.from_numpy(o_scores), scores, atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.from_numpy(o_boxes), boxes, atol=0.05, rtol=0)


R50_CFG = os.path.join(ROOT, "projects/lite_dino/configs/lite_dino_r50_4scale_h3l1_a2b3_36ep.py")


@pytest.mark.skipif(
    os.environ.get("LITE_DETR_TEST_R50_EXPORT") != "1",
    reason="exports Lite-DINO R50 (~2-7 min on 2 CPU cores); set LITE_DETR_TEST_R50_EXPORT=1",
)
def test_r50_exports_and_matches_at_two_sizes(tmp_path):
    """The issue's must-show: Lite-DINO R50 (random weights: no trained checkpoint here) exports
    once and matches PyTorch at 512x640 and 608x800. Random weights give near-tied encoder
    proposals, so the tool's check may excuse a flipped query selection, and only when PyTorch's
    decoding of ONNX Runtime's own selection equals its detections strictly."""
    torch.manual_seed(0)
    model = instantiate(load_config(R50_CFG).model).eval()
    build_checkpointer(model, str(tmp_path)).save("r50")
    out = tmp_path / "r50.onnx"
    report = _run(
        ["--config-file", R50_CFG, "--weights", str(tmp_path / "r50.pth"), "--format", "onnx"]
        + ["--output", str(out), "--input-size", "512", "640", "--check-size", "608", "800"]
    )
    assert out.is_file() and [r["size"] for r in report] == [(512, 640), (608, 800)]
    for r in report:
        print(r["size"], describe_comparison(r, model.num_queries))
        strict = r if r["selection"] is None else r["selection"]
        assert strict["matched"] == strict["detections"] == 300
        assert strict["max_score_diff"] <= SCORE_TOLERANCE
        assert strict["max_box_diff_px"] <= BOX_TOLERANCE


def test_optimized_onnx_file_gives_the_same_detections(tiny_export):
    out, _, model, _ = tiny_export
    optimized = write_optimized_onnx(str(out))
    assert optimized == optimized_onnx_path(str(out)) == str(out.parent / "tiny.optimized.onnx")
    assert os.path.isfile(optimized) and not list(out.parent.glob(".tmp-*"))
    assert os.path.getsize(optimized) > 0.5 * os.path.getsize(out)  # the weights are in it
    plain = onnx_session(str(out), threads=2, level="disabled")
    fast = onnx_session(optimized, threads=2, level="all")
    g = torch.Generator().manual_seed(7)
    for h, w in [(128, 160), (160, 96)]:  # the export size and another (the graph stays dynamic)
        image = (torch.rand(3, h, w, generator=g) * 255).numpy()
        expected = plain.run(None, {"image": image})
        stats = compare_detections(expected, fast.run(None, {"image": image}), (h, w))
        assert stats["matched"] == stats["detections"] == 30


def test_benchmark_times_an_exported_file(tiny_export, monkeypatch):
    out, _, model, _ = tiny_export
    benchmark = load_tool("benchmark")
    monkeypatch.setattr(benchmark, "read_load", lambda: (0.1, 2))
    args = ["--config-file", SHAPES_CFG, "--input-size", "128", "160", "--iters", "2"]
    args += ["--warmup", "1", "--runtime", "onnxruntime", "--onnx", str(out), *EXPORT_TINY]
    stats = benchmark.main(args)["inference"]
    assert stats["runtime"] == "onnxruntime" and stats["precision"] == "fp32"
    assert stats["optimized_onnx_file"] == optimized_onnx_path(str(out))
    assert stats["runs"] == 2 and 0 < stats["median_s"]


def test_onnx_detector_checks_the_minimum_size(tiny_export):
    # issue 25, item 13: ONNX Runtime's "TopK ... k argument [30] should not be greater than"
    # becomes one line that says the file's minimum
    out, _, model, _ = tiny_export
    low = min_input_side(model)
    detector = OnnxDetector(str(out))
    assert (detector.min_side, detector.size_divisibility) == (low, 1)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    small = (torch.rand(3, 16, 24) * 255).numpy()  # fewer encoder tokens than num_queries
    with pytest.raises(Exception, match="TopK"):  # what the graph alone does
        session.run(None, {"image": small})
    with pytest.raises(ExportError) as e:
        detector(small)
    assert str(e.value) == (
        f"image 16x24 is smaller than the minimum {low}x{low} of {out}: resize it "
        f"so that both sides are >= {low} (e.g. as the config's test mapper does) before detection"
    )
    image = torch.rand(3, low, low + 8) * 255
    for got, expected in zip(detector(image), session.run(None, {"image": image.numpy()})):
        assert (got == expected).all()


def test_input_size_below_the_minimum_says_the_minimum(tmp_path, capsys):
    # issue 25, item 14: "--input-size 0 0" suggested 1x1, which is refused too
    weights, model = _save_weights(tmp_path / "tiny.pth")
    low = min_input_side(model)
    out = tmp_path / "model.onnx"
    for size in (["0", "0"], [str(low - 8), str(low)]):
        err = _expect_error(
            capsys,
            ["--config-file", SHAPES_CFG, "--weights", weights, "--output", str(out)]
            + ["--input-size", *size]
            + EXPORT_TINY,
            f"input size {size[0]}x{size[1]} is too small",
            f"needs at least {low}x{low}",
        )
        assert f"use e.g. {max(int(size[0]), low)}x{max(int(size[1]), low)}" in err
    assert not out.exists()


def _expect_error(capsys, args, *words):
    with pytest.raises(SystemExit) as exc:
        _run(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    # one message, the last line (stale log handlers of earlier tests may print above it)
    err = err.strip().splitlines()[-1]
    assert err.startswith("export_model.py: error: "), err
    for word in words:
        assert word in err, err
    return err


def test_bad_input_size_leaves_no_file(tmp_path, capsys):
    weights, _ = _save_weights(tmp_path / "tiny.pth", ["model.size_divisibility=32"])
    out = tmp_path / "model.onnx"
    out.write_text("a file the user keeps")
    _expect_error(
        capsys,
        ["--config-file", SHAPES_CFG, "--weights", weights, "--output", str(out)]
        + ["--input-size", "100", "128"]
        + EXPORT_TINY
        + ["model.size_divisibility=32"],
        "100x128",
        "multiple",
        "128x128",
    )
    assert out.read_text() == "a file the user keeps"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "last_checkpoint",
        "model.onnx",
        "tiny.pth",
    ]


def test_weights_of_another_variant(tmp_path, capsys):
    weights, _ = _save_weights(tmp_path / "h2l2.pth", ["model.encoder.num_high_levels=2"])
    out = tmp_path / "model.onnx"
    _expect_error(
        capsys,
        ["--config-file", SHAPES_CFG, "--weights", weights, "--output", str(out)] + EXPORT_TINY,
        "H2L2",
        "H3L1",
    )
    assert not out.exists()


def test_non_exportable_model(tmp_path, capsys):
    cfg = tmp_path / "linear.py"
    cfg.write_text(
        "import torch\nfrom detectron2.config import LazyCall as L\n"
        "model = L(torch.nn.Linear)(in_features=2, out_features=2)\n"
    )
    out = tmp_path / "model.onnx"
    _expect_error(
        capsys,
        ["--config-file", str(cfg), "--weights", "missing.pth", "--output", str(out)],
        "cannot export Linear",
        "DINO",
    )
    assert not out.exists()
