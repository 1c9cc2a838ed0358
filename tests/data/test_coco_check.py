"""Each kind of broken COCO-format dataset: one message naming the file, the id and the fix."""

import json
import math

import numpy as np
import pytest
from PIL import Image

from lite_detr.data import DatasetError, check_coco_json

CATS = [{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}]


def _dataset(tmp_path, images=None, anns=None, cats=CATS, write_images=True):
    root = tmp_path / "imgs"
    root.mkdir(exist_ok=True)
    images = (
        images
        if images is not None
        else [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 30}]
    )
    if write_images:
        for img in images:
            noise = np.random.default_rng(0).integers(0, 255, (img["height"], img["width"], 3))
            Image.fromarray(noise.astype(np.uint8)).save(root / img["file_name"])
    anns = (
        anns
        if anns is not None
        else [{"id": 5, "image_id": 1, "category_id": 3, "bbox": [1, 2, 10, 20], "iscrowd": 0}]
    )
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return str(path), str(root)


def test_good_dataset_summary(tmp_path):
    json_file, root = _dataset(tmp_path)
    s = check_coco_json(json_file, root)
    assert s.thing_classes == ["cat", "dog"] and s.id_map == {1: 0, 3: 1}
    assert (s.num_images, s.num_annotations, s.bad_images) == (1, 1, [])


@pytest.mark.parametrize(
    "content, match",
    [
        ('{"images": [', r"not valid JSON .*truncated"),
        ("", r"not valid JSON .*it is empty"),
        ("{}", r"has no 'images' list \(it holds nothing\)"),
        ("[1, 2]", r"holds a JSON list, not a COCO object"),
        ('{"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}', "no images"),
        (
            '{"images": [{"id": 1, "file_name": "a.jpg", "width": 4, "height": 3}], '
            '"annotations": [], "categories": []}',
            "defines no categories",
        ),
    ],
)
def test_broken_json(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DatasetError, match=match) as e:
        check_coco_json(str(path), str(tmp_path))
    assert str(path) in str(e.value)


def test_missing_json(tmp_path):
    with pytest.raises(DatasetError, match=r"nope.json does not exist: check the path"):
        check_coco_json(str(tmp_path / "nope.json"), str(tmp_path))


@pytest.mark.parametrize(
    "ann, match",
    [
        (
            {"category_id": 2},
            r"annotation id 5 \(image id 1, 'a.jpg'\) has category_id 2.*\[1, 3\]",
        ),
        ({"bbox": [1, 2, 0, 20]}, r"annotation id 5 .*width or height <= 0"),
        ({"bbox": [1, 2, 10, -4]}, r"annotation id 5 .*width or height <= 0"),
        ({"bbox": [math.nan, 2, 10, 20]}, r"annotation id 5 .*non-finite bbox"),
        ({"bbox": [1, 2, 1e9, 20]}, r"annotation id 5 .*outside its 40x30 image"),
        ({"bbox": [-5, 2, 10, 20]}, r"annotation id 5 .*outside its 40x30 image"),
        ({"bbox": [1, 2, 10]}, r"annotation id 5 .*no \[x, y, width, height\]"),
        ({"image_id": 9}, r"annotation id 5 refers to image_id 9"),
    ],
)
def test_bad_annotation(tmp_path, ann, match):
    base = {"id": 5, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 20]}
    json_file, root = _dataset(tmp_path, anns=[{**base, **ann}])
    with pytest.raises(DatasetError, match=match) as e:
        check_coco_json(json_file, root)
    assert json_file in str(e.value)


def test_bad_image_entry(tmp_path):
    images = [{"id": 1, "file_name": "a.jpg", "width": 0, "height": 30}]
    json_file, root = _dataset(tmp_path, images=images, anns=[], write_images=False)
    with pytest.raises(DatasetError, match=r"image id 1 \('a.jpg'\) has width=0"):
        check_coco_json(json_file, root)


def _truncate(path, keep=0.7):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: int(len(data) * keep)])


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda p: p.unlink(), "does not exist"),
        (lambda p: p.write_bytes(b"not an image"), "is not an image file"),
        (_truncate, r"is truncated \(its JPEG end marker is missing and it does not decode\)"),
        (lambda p: Image.new("RGB", (41, 30)).save(p), "is 41x30 pixels but its annotation says"),
    ],
)
def test_bad_image_file_names_image_and_option(tmp_path, damage, match):
    json_file, root = _dataset(tmp_path)
    damage(tmp_path / "imgs" / "a.jpg")
    with pytest.raises(DatasetError, match=rf"a.jpg \(image id 1 in .*ann.json\) {match}") as e:
        check_coco_json(json_file, root)
    assert "train.skip_bad_images=True" in str(e.value)
    # the annotations alone are fine; skipping collects the image instead of failing
    assert check_coco_json(json_file, root, check_images=False).num_images == 1
    s = check_coco_json(json_file, root, skip_bad_images=True)
    assert [p.endswith("a.jpg") for p, _ in s.bad_images] == [True]


def test_data_after_the_jpeg_end_marker_is_fine(tmp_path):
    json_file, root = _dataset(tmp_path)
    with open(tmp_path / "imgs" / "a.jpg", "ab") as f:
        f.write(b"camera trailer " * 20)
    assert check_coco_json(json_file, root).bad_images == []


def test_exif_rotated_image_size_is_the_rotated_one(tmp_path):
    images = [{"id": 1, "file_name": "a.jpg", "width": 30, "height": 40}]
    json_file, root = _dataset(tmp_path, images=images, anns=[], write_images=False)
    im = Image.new("RGB", (40, 30))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees: detectron2 reads it as 30 wide, 40 high
    im.save(tmp_path / "imgs" / "a.jpg", exif=exif)
    assert check_coco_json(json_file, root).num_images == 1


def test_png_with_damaged_data_is_found_by_the_check_and_the_reader(tmp_path):
    # header and IEND intact, compressed data broken
    from lite_detr.data import read_image

    images = [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}]
    json_file, root = _dataset(tmp_path, images=images)
    path = tmp_path / "imgs" / "a.png"
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT") + 40
    data[start : start + 64] = bytes(64)
    path.write_bytes(bytes(data))
    assert data.endswith(b"IEND\xaeB`\x82")
    with pytest.raises(DatasetError, match=r"a.png \(image id 1 in .*\) is a damaged PNG"):
        check_coco_json(json_file, root)
    s = check_coco_json(json_file, root, skip_bad_images=True)
    assert [p.endswith("a.png") for p, _ in s.bad_images] == [True]
    with pytest.raises(OSError):  # the training reader refuses it too, at the first read
        read_image(str(path))


def test_exif_quarter_turn_that_disagrees_with_the_json_says_so(tmp_path):
    # the json has the stored (unrotated) size of an EXIF-rotated image
    images = [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 30}]
    json_file, root = _dataset(tmp_path, images=images, anns=[], write_images=False)
    im = Image.new("RGB", (40, 30))
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(tmp_path / "imgs" / "a.jpg", exif=exif)
    with pytest.raises(DatasetError) as e:
        check_coco_json(json_file, root)
    message = str(e.value)
    assert "EXIF orientation 6" in message and "read as 30x40" in message
    assert "set width=30, height=40 in the json" in message and "-Orientation=" in message
    assert "\n" not in message
