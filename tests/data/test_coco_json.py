import json

import pytest
from detectron2.structures import BoxMode

from lite_detr.data import load_coco_detection_json


def _write(tmp_path, anns, cats=({"id": 1, "name": "circle"}, {"id": 5, "name": "star"})):
    data = {
        "images": [{"id": 7, "file_name": "a.jpg", "height": 50, "width": 60}],
        "annotations": anns,
        "categories": list(cats),
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return str(path)


def _ann(i, cat=1, bbox=(1, 2, 10, 20)):
    return {"id": i, "image_id": 7, "category_id": cat, "bbox": list(bbox), "area": 1, "iscrowd": 0}


def test_loads_with_contiguous_ids(tmp_path):
    path = _write(tmp_path, [_ann(1, 1), _ann(2, 5)])
    (d,) = load_coco_detection_json(path, "/root")
    assert d["file_name"] == "/root/a.jpg" and (d["height"], d["width"]) == (50, 60)
    assert [a["category_id"] for a in d["annotations"]] == [0, 1]
    assert d["annotations"][0]["bbox_mode"] == BoxMode.XYWH_ABS


def test_unknown_category_names_image_and_annotation(tmp_path):
    path = _write(tmp_path, [_ann(1), _ann(42, cat=3)])
    with pytest.raises(
        ValueError, match=r"annotation id 42 \(image id 7, 'a.jpg'\).*category_id 3"
    ):
        load_coco_detection_json(path, "/root")


@pytest.mark.parametrize(
    "bbox", [(1, 2, 0, 20), (1, 2, 10, -3), (float("nan"), 2, 10, 20), (55, 2, 10, 20)]
)
def test_degenerate_box_names_image_and_annotation(tmp_path, bbox):
    path = _write(tmp_path, [_ann(9, bbox=bbox)])
    with pytest.raises(ValueError, match=r"annotation id 9 \(image id 7, 'a.jpg'\)"):
        load_coco_detection_json(path, "/root")


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match="nope.json does not exist"):
        load_coco_detection_json(str(tmp_path / "nope.json"), "/root")
