"""Strict loading of COCO-format detection annotations into detectron2's dataset dicts."""

import logging
import os
from typing import Dict, List, Optional

from detectron2.structures import BoxMode

from .coco_check import checked_coco_annotations

__all__ = ["load_coco_detection_json"]

logger = logging.getLogger(__name__)


def load_coco_detection_json(
    json_file: str, image_root: str, dataset_name: Optional[str] = None
) -> List[Dict]:
    """
    Load a COCO-format detection json (boxes only) into detectron2's list[dict] format.

    Unlike ``detectron2.data.datasets.load_coco_json``, which clips or drops bad boxes silently,
    the file is checked first (:func:`~lite_detr.data.datasets.coco_check.check_coco_json`
    without the images): a problem raises :class:`~lite_detr.data.DatasetError` naming the json
    file, the image and the annotation id, and the fix.

    Args:
        json_file (str): path to the annotation json.
        image_root (str): directory the images' ``file_name`` are relative to.
        dataset_name (str, optional): if given, ``thing_classes`` and
            ``thing_dataset_id_to_contiguous_id`` are set in its ``MetadataCatalog`` entry.

    Returns:
        list[dict]: one dict per image with ``file_name``, ``height``, ``width``, ``image_id``
        and ``annotations`` (``bbox`` in XYWH_ABS, contiguous ``category_id``, ``iscrowd``).
    """
    data, thing_classes, id_map, images = checked_coco_annotations(json_file)
    if dataset_name is not None:
        from detectron2.data import MetadataCatalog

        meta = MetadataCatalog.get(dataset_name)
        meta.thing_classes = thing_classes
        meta.thing_dataset_id_to_contiguous_id = id_map

    anns_by_image: Dict[int, List[Dict]] = {img_id: [] for img_id in images}
    for ann in data["annotations"]:
        anns_by_image[ann["image_id"]].append(
            {
                "bbox": [float(v) for v in ann["bbox"]],
                "bbox_mode": BoxMode.XYWH_ABS,
                "category_id": id_map[ann["category_id"]],
                "iscrowd": int(ann.get("iscrowd", 0)),
            }
        )
    dataset_dicts = [
        {
            "file_name": os.path.join(image_root, images[img_id]["file_name"]),
            "height": int(images[img_id]["height"]),
            "width": int(images[img_id]["width"]),
            "image_id": img_id,
            "annotations": anns_by_image[img_id],
        }
        for img_id in sorted(images)
    ]
    logger.info(f"Loaded {len(dataset_dicts)} images from {json_file}")
    return dataset_dicts
