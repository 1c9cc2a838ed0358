import numpy as np
import pytest
import torch
from detectron2.data import transforms as T
from detectron2.structures import BoxMode
from PIL import Image

from lite_detr.data import DetrDatasetMapper, build_detr_augmentation


@pytest.fixture
def record(tmp_path):
    path = tmp_path / "img.jpg"
    Image.fromarray(np.full((100, 150, 3), 127, dtype=np.uint8)).save(path)
    anns = [
        {"bbox": [10, 10, 40, 30], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 2, "iscrowd": 0},
        {"bbox": [100, 60, 30, 30], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "iscrowd": 0},
    ]
    return {"file_name": str(path), "height": 100, "width": 150, "image_id": 1, "annotations": anns}


def test_train_mapping(record):
    mapper = DetrDatasetMapper(
        is_train=True, augmentation=[T.ResizeShortestEdge(200, 1000)], image_format="RGB"
    )
    out = mapper(record)
    assert out["image"].dtype == torch.uint8 and out["image"].shape == (3, 200, 300)
    inst = out["instances"]
    assert inst.gt_classes.tolist() == [2, 0]
    torch.testing.assert_close(inst.gt_boxes.tensor[0], torch.tensor([20.0, 20.0, 100.0, 80.0]))
    assert "annotations" in record  # the dataset dict is not modified


def test_crop_recipe_keeps_boxes_inside(record):
    mapper = DetrDatasetMapper(
        is_train=True,
        augmentation=build_detr_augmentation(min_sizes=(64,), max_size=200),
        augmentation_with_crop=build_detr_augmentation(
            min_sizes=(64,),
            max_size=200,
            crop_resize_sizes=(90,),
            crop_size=(40, 60),
            with_crop=True,
        ),
        crop_prob=1.0,
    )
    np.random.seed(0)
    for _ in range(5):
        out = mapper(record)
        h, w = out["image"].shape[1:]
        assert min(h, w) == 64
        boxes = out["instances"].gt_boxes.tensor
        assert (boxes[:, 2:] > boxes[:, :2]).all()  # empty boxes were dropped
        assert (boxes >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()


def test_test_mapping_drops_annotations(record):
    mapper = DetrDatasetMapper(is_train=False, augmentation=[T.ResizeShortestEdge(50, 1000)])
    out = mapper(record)
    assert "annotations" not in out and "instances" not in out
    assert out["image"].shape == (3, 50, 75) and out["height"] == 100


def test_unreadable_image_names_file(record, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    record["file_name"] = str(bad)
    mapper = DetrDatasetMapper(is_train=False, augmentation=[])
    with pytest.raises(OSError, match="broken.jpg"):
        mapper(record)


def test_bad_image_format():
    with pytest.raises(ValueError, match="image_format"):
        DetrDatasetMapper(augmentation=[], image_format="YUV")
