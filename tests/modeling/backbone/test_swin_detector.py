"""Lite-DINO with a (tiny) Swin backbone: trains on the shapes data on CPU, and its inference path
exports with torch.export (dynamic H, W) and to ONNX (one file, two sizes, ONNX Runtime equals
PyTorch)."""

import importlib.util
import os

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog

from lite_detr.data import register_shapes
from lite_detr.engine import build_checkpointer, load_config
from lite_detr.export import InferenceDetector, export_program

from ...conftest import ROOT, TINY_MODEL

SWIN_CFG = os.path.join(
    ROOT, "projects/lite_dino/configs/lite_dino_swin_t_4scale_h3l1_a2b3_36ep.py"
)
# the Swin-T config with a Swin of one block per stage, 32 channels, and the tests' small
# transformer (64 channels, one decoder layer, 30 queries)
SWIN_TINY = TINY_MODEL + [
    "model.decoder.num_layers=1",
    "model.backbone.embed_dim=32",
    "model.backbone.depths=[1,1,1,1]",
    "model.backbone.num_heads=[1,2,4,8]",
    "model.neck.input_shapes.res3.channels=64",
    "model.neck.input_shapes.res4.channels=128",
    "model.neck.input_shapes.res5.channels=256",
    "model.num_classes=4",
    "train.device=cpu",
]


def _model(overrides=()):
    torch.manual_seed(0)
    return instantiate(load_config(SWIN_CFG, SWIN_TINY + list(overrides)).model)


def test_tiny_swin_lite_dino_trains_on_shapes(tmp_path):
    if "swin_shapes_train" not in DatasetCatalog.list():
        register_shapes("swin_shapes", root=str(tmp_path), num_train=4, num_val=1, image_size=96)
    cfg = load_config(SWIN_CFG, SWIN_TINY)
    # the shapes data and its light augmentation (no crops) at 96 px, 2 images per batch
    cfg.dataloader = LazyConfig.load(os.path.join(ROOT, "configs/common/data/shapes.py")).dataloader
    LazyConfig.apply_overrides(
        cfg,
        [
            "dataloader.train.dataset.names=swin_shapes_train",
            "dataloader.train.total_batch_size=2",
            "dataloader.train.num_workers=0",
            "dataloader.input_size=96",
        ],
    )
    torch.manual_seed(0)
    model = instantiate(cfg.model).train()
    batch = next(iter(instantiate(cfg.dataloader.train)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(10):  # one batch over and over: the loss must fall
        loss = sum(model(batch).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-2:]) < 0.85 * sum(losses[:2]), losses


def test_torch_export_with_dynamic_size_matches_eager():
    model = _model().eval()
    assert model.backbone.min_export_side == 225  # two windows of 7 at stride 32
    program = export_program(model, 256, 288)
    placeholder = next(
        n for n in program.graph.nodes if n.op == "placeholder" and n.name == "image"
    )
    h, w = placeholder.meta["val"].shape[1:]
    assert not isinstance(h, int) and not isinstance(w, int)
    wrapper = InferenceDetector(model)
    g = torch.Generator().manual_seed(0)
    # the smallest size (two windows at stride 32, rounded up to 8), padded windows at odd sizes
    for size in [(256, 288), (232, 232), (263, 301)]:
        image = torch.rand(3, *size, generator=g) * 255
        with torch.no_grad():
            for a, e in zip(program.module()(image), wrapper(image)):
                assert a.shape == e.shape
                torch.testing.assert_close(a, e, atol=1e-4, rtol=1e-5)


def test_onnx_export_runs_at_two_sizes(tmp_path):
    pytest.importorskip("onnxruntime")
    model = _model().eval()
    build_checkpointer(model, str(tmp_path)).save("swin")
    spec = importlib.util.spec_from_file_location(
        "export_model", os.path.join(ROOT, "tools", "export_model.py")
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "swin.onnx"
    report = tool.main(
        ["--config-file", SWIN_CFG, "--weights", str(tmp_path / "swin.pth"), "--format", "onnx"]
        + ["--output", str(out), "--input-size", "256", "288", "--check-size", "233", "321"]
        + SWIN_TINY
    )
    assert out.is_file() and [r["size"] for r in report] == [(256, 288), (233, 321)]
    assert all(r["selection"] is None and r["matched"] == r["detections"] == 30 for r in report)
