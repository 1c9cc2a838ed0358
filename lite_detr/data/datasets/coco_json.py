"""Strict loading of COCO-format detection annotations into detectron2's dataset dicts."""

import contextlib
import io
import logging
import math
import os
from typing import Dict, List, Optional

from detectron2.structures import BoxMode

__all__ = ["load_coco_detection_json"]

logger = logging.getLogger(__name__)


def load_coco_detection_json(
    json_file: str, image_root: str, dataset_name: Optional[str] = None
) -> List[Dict]:
    """
    Load a COCO-format detection json (boxes only) into detectron2's list[dict] format.

    Unlike ``detectron2.data.datasets.load_coco_json``, every annotation is checked: an unknown
    ``category_id`` or a degenerate box (non-finite, width or height <= 0, outside the image)
    raises a ``ValueError`` naming the json file, the image and the annotation id, instead of a
    bare ``KeyError`` deep in a data-loader worker or silently wrong targets.

    Args:
        json_file (str): path to the annotation json.
        image_root (str): directory the images' ``file_name`` are relative to.
        dataset_name (str, optional): if given, ``thing_classes`` and
            ``thing_dataset_id_to_contiguous_id`` are set in its ``MetadataCatalog`` entry.

    Returns:
        list[dict]: one dict per image with ``file_name``, ``height``, ``width``, ``image_id``
        and ``annotations`` (``bbox`` in XYWH_ABS, contiguous ``category_id``, ``iscrowd``).
    """
    from pycocotools.coco import COCO

    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"Annotation file {json_file} does not exist.")
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            coco = COCO(json_file)
        except Exception as e:  # malformed json or missing top-level keys
            raise ValueError(f"Cannot parse COCO annotation file {json_file}: {e}") from e

    cat_ids = sorted(coco.getCatIds())
    if not cat_ids:
        raise ValueError(f"{json_file} defines no categories.")
    id_map = {cat_id: i for i, cat_id in enumerate(cat_ids)}
    if dataset_name is not None:
        from detectron2.data import MetadataCatalog

        meta = MetadataCatalog.get(dataset_name)
        meta.thing_classes = [c["name"] for c in coco.loadCats(cat_ids)]
        meta.thing_dataset_id_to_contiguous_id = id_map

    dataset_dicts = []
    for img_id in sorted(coco.imgs.keys()):
        img = coco.imgs[img_id]
        height, width = img["height"], img["width"]
        file_name = os.path.join(image_root, img["file_name"])
        objs = []
        for ann in coco.imgToAnns.get(img_id, []):
            where = f"{json_file}: image {img['file_name']!r} (id {img_id}), annotation id {ann.get('id')}"
            if ann.get("category_id") not in id_map:
                raise ValueError(
                    f"{where} has unknown category_id {ann.get('category_id')!r}; "
                    f"the file defines categories {cat_ids}. Fix the annotation or add the category."
                )
            bbox = ann.get("bbox")
            if bbox is None or len(bbox) != 4:
                raise ValueError(f"{where} has no [x, y, w, h] bbox (got {bbox!r}).")
            x, y, w, h = (float(v) for v in bbox)
            if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
                raise ValueError(
                    f"{where} has a degenerate bbox {bbox} (needs finite x, y and w > 0, h > 0)."
                )
            if x < -1 or y < -1 or x + w > width + 1 or y + h > height + 1:
                raise ValueError(f"{where} has bbox {bbox} outside the {width}x{height} image.")
            objs.append(
                {
                    "bbox": [x, y, w, h],
                    "bbox_mode": BoxMode.XYWH_ABS,
                    "category_id": id_map[ann["category_id"]],
                    "iscrowd": int(ann.get("iscrowd", 0)),
                }
            )
        dataset_dicts.append(
            {
                "file_name": file_name,
                "height": height,
                "width": width,
                "image_id": img_id,
                "annotations": objs,
            }
        )
    logger.info(f"Loaded {len(dataset_dicts)} images from {json_file}")
    return dataset_dicts
