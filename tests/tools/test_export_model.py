"""tools/export_model.py: ONNX export of a tiny Lite-DINO, run by ONNX Runtime at several input
sizes from one file and compared with the PyTorch model; bad input gives one clear error and no
output file."""

import pytest
import torch
from detectron2.config import instantiate

from lite_detr.engine import build_checkpointer, load_config

from ..conftest import TINY_MODEL
from .conftest import SHAPES_CFG, load_tool

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


def test_export_onnx_runs_at_several_sizes(tmp_path):
    weights, model = _save_weights(tmp_path / "tiny.pth")
    out = tmp_path / "tiny.onnx"
    report = _run(
        ["--config-file", SHAPES_CFG, "--weights", weights, "--format", "onnx"]
        + ["--output", str(out), "--input-size", "128", "160", "--check-size", "96", "224"]
        + EXPORT_TINY
    )
    assert [r["size"] for r in report] == [(128, 160), (96, 224)]
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
