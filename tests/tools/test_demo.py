import json
import os
import re

import numpy as np
import pytest
import torch
from detectron2.config import instantiate
from PIL import Image

from lite_detr.checkpoint import LiteDetrCheckpointer
from lite_detr.config import ConfigError, load_config
from lite_detr.engine import Predictor, read_rgb

from .conftest import SHAPES_CFG, TINY, load_tool


@pytest.fixture(scope="module")
def weights(tmp_path_factory, tools_data):
    cfg = load_config(SHAPES_CFG, TINY + tools_data)
    path = tmp_path_factory.mktemp("w") / "model.pth"
    torch.manual_seed(0)
    torch.save({"model": instantiate(cfg.model).state_dict()}, path)
    return str(path)


def test_demo_writes_png_and_json(tmp_path, weights, tools_data):
    demo = load_tool("demo")
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "b.png"):
        Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(folder / name)
    out = tmp_path / "out"
    cfg = load_config(SHAPES_CFG, TINY + tools_data)
    # threshold 0: an untrained model still reports its top detections
    results = demo.run(cfg, weights, [str(folder)], str(out), threshold=0.0)
    assert sorted(os.listdir(out)) == ["a.png", "b.png", "results.json"]
    with Image.open(out / "a.png") as im:
        assert im.size == (120, 90)
    with open(out / "results.json") as f:
        saved = json.load(f)
    assert saved == json.loads(json.dumps(results))
    det = saved[0]["instances"]
    assert len(det) == 30  # select_box_nums_for_evaluation
    assert det[0]["category"] in ("circle", "rectangle", "triangle", "star")
    x0, y0, x1, y1 = det[0]["bbox_xyxy"]
    assert 0 <= x0 <= x1 <= 120 and 0 <= y0 <= y1 <= 90  # boxes in input pixels
    none = demo.run(cfg, weights, [str(folder / "a.jpg")], str(tmp_path / "o2"), threshold=1.01)
    assert none[0]["instances"] == []


def test_demo_bad_inputs(tmp_path, weights, tools_data, capsys):
    demo = load_tool("demo")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\x00garbage")
    cfg = load_config(SHAPES_CFG, TINY + tools_data)
    with pytest.raises(ConfigError, match="bad.jpg"):
        demo.run(cfg, weights, [str(bad)], str(tmp_path / "out"))
    with pytest.raises(ConfigError, match="missing.jpg.*does not exist"):
        demo.run(cfg, weights, [str(tmp_path / "missing.jpg")], str(tmp_path / "out"))
    with pytest.raises(SystemExit) as e:
        demo.main(
            [
                "--config-file",
                SHAPES_CFG,
                "--weights",
                str(tmp_path / "no.pth"),
                "--input",
                str(bad),
                "--output",
                str(tmp_path / "o"),
            ]
            + TINY
            + tools_data
        )
    assert e.value.code == 2
    assert "no.pth" in capsys.readouterr().err


def test_demo_says_when_nothing_passes_the_threshold(tmp_path, weights, tools_data, caplog):
    demo = load_tool("demo")
    image = tmp_path / "a.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        image
    )
    cfg = load_config(SHAPES_CFG, TINY + tools_data)
    best = Predictor(cfg, weights)(read_rgb(str(image))).scores.max().item()
    (result,) = demo.run(cfg, weights, [str(image)], str(tmp_path / "out"), threshold=1.01)
    assert result["instances"] == []
    assert f"no detection scored >= 1.01 (best score: {best:.3f})" in caplog.text
    # the class names are the dataset's (the shapes)
    (result,) = demo.run(cfg, weights, [str(image)], str(tmp_path / "out"), threshold=0.0)
    names = {inst["category"] for inst in result["instances"]}
    assert names and names <= {"circle", "rectangle", "triangle", "star"}


def test_demo_skips_unreadable_images_and_applies_exif_orientation(tmp_path, weights, tools_data):
    demo = load_tool("demo")
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (60, 100, 3), dtype=np.uint8)).save(folder / "good.png")
    # a camera JPEG stored landscape (100x60) with "rotate 90" in its EXIF: shown as 60x100
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = Image.fromarray(rng.integers(0, 255, (60, 100, 3), dtype=np.uint8))
    rotated.save(folder / "rotated.jpg", exif=exif)
    # a JPEG cut off mid-file (an interrupted copy)
    Image.fromarray(rng.integers(0, 255, (60, 100, 3), dtype=np.uint8)).save(folder / "cut.jpg")
    data = (folder / "cut.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    cfg = load_config(SHAPES_CFG, TINY + tools_data)
    results = demo.run(cfg, weights, [str(folder)], str(out), threshold=0.0)
    assert [os.path.basename(r["file_name"]) for r in results] == ["good.png", "rotated.jpg"]
    assert sorted(os.listdir(out)) == ["good.png", "results.json", "rotated.png"]
    with Image.open(out / "rotated.png") as im:
        assert im.size == (60, 100)  # width x height after the EXIF rotation
    assert read_rgb(str(folder / "rotated.jpg")).shape == (100, 60, 3)
    file_output = tmp_path / "file_output"
    file_output.write_text("")
    with pytest.raises(ConfigError, match="--output .*file_output' is a file"):
        demo.run(cfg, weights, [str(folder)], str(file_output))


def _demo_argv(tmp_path, weights, tools_data, overrides=()):
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(image)
    return (
        ["--config-file", SHAPES_CFG, "--weights", weights, "--input", str(image)]
        + ["--output", str(tmp_path / "out")]
        + TINY
        + tools_data
        + list(overrides)
    )


def test_weights_of_another_variant_are_one_line_and_exit_status_2(
    tmp_path, weights, tools_data, capsys
):
    argv = _demo_argv(tmp_path, weights, tools_data, ["model.encoder.num_high_levels=2"])
    demo = load_tool("demo")
    with pytest.raises(SystemExit) as e:
        demo.main(argv)
    assert e.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"demo.py: error: Cannot load checkpoint {weights!r}: "), last
    assert re.search(r"encoder variant 'H3L1-\S+' does not match the config's 'H2L2-", last), last
    assert not (tmp_path / "out").exists()


def test_out_of_memory_while_loading_weights_is_not_reported_as_bad_input(
    tmp_path, weights, tools_data, monkeypatch
):
    def out_of_memory(self, filename):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(LiteDetrCheckpointer, "_load_file", out_of_memory)
    demo = load_tool("demo")
    with pytest.raises(RuntimeError, match="out of memory") as e:  # its traceback, no SystemExit
        demo.main(_demo_argv(tmp_path, weights, tools_data))
    assert not isinstance(e.value, ConfigError)


def test_demo_skips_a_broken_video_and_saves_the_images_results(tmp_path, weights, tools_data):
    # issue 25, item 2: one broken video among good images costs only that video
    demo = load_tool("demo")
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "b.png"):
        Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(folder / name)
    (folder / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    out = tmp_path / "out"
    cfg = load_config(SHAPES_CFG, TINY + tools_data)
    results = demo.run(cfg, weights, [str(folder)], str(out), threshold=0.0)
    assert [os.path.basename(r["file_name"]) for r in results] == ["a.jpg", "b.png"]
    with open(out / "results.json") as f:
        assert [os.path.basename(r["file_name"]) for r in json.load(f)] == ["a.jpg", "b.png"]
    assert sorted(os.listdir(out)) == ["a.png", "b.png", "results.json"]


def test_sixteen_bit_png_is_scaled_to_eight_bits(tmp_path):
    # issue 25, item 4: a 16-bit grayscale PNG read as OpenCV reads it, not clipped to all-255
    ramp = (np.arange(48 * 64, dtype=np.uint32).reshape(48, 64) * 21).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "depth16.png")
    rgb = read_rgb(str(tmp_path / "depth16.png"))
    assert rgb.shape == (48, 64, 3) and rgb.dtype == np.uint8
    expected = (ramp >> 8).astype(np.uint8)
    assert all(np.array_equal(rgb[..., c], expected) for c in range(3))
    assert rgb.min() == 0 and rgb.max() == expected.max() > 200  # a ramp, not a blank picture


def test_demo_precision_bf16_falls_back_with_one_line(tmp_path, weights, tools_data, monkeypatch):
    import lite_detr.precision as precision

    demo = load_tool("demo")
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: None)
    argv = _demo_argv(tmp_path, weights, tools_data)
    warned = []
    monkeypatch.setattr(precision.logger, "warning", warned.append)
    results = demo.main(argv[:2] + ["--precision", "bf16"] + argv[2:])
    assert len(results) == 1 and os.path.isfile(results[0]["output"])
    assert len(warned) == 1 and "running in fp32 instead of bf16" in warned[0]
