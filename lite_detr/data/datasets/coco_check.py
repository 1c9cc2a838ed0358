"""
Check a COCO-format detection dataset (annotation json + image folder) before training.

Every problem gets one message that names the file, the image or annotation id and the fix, so a
broken dataset stops the run before the first iteration instead of failing deep in a data-loader
worker (or, with detectron2's ``load_coco_json``, training on silently clipped or dropped boxes).
"""

import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

__all__ = [
    "DatasetError",
    "CocoDatasetSummary",
    "check_coco_json",
    "check_image_file",
    "checked_coco_annotations",
]


# a box may stick out of its image by this many pixels (rounding in annotation tools)
BOX_TOLERANCE = 1.0
_EXIF_ORIENTATION = 0x0112


class DatasetError(ValueError):
    """A broken dataset file: the message names the file, the image/annotation and the fix."""


@dataclass
class CocoDatasetSummary:
    """What :func:`check_coco_json` found.

    Attributes:
        json_file: the annotation file.
        thing_classes: category names, in the order of their ids (detectron2's contiguous ids).
        id_map: json category id -> contiguous id.
        num_images, num_annotations: counts in the file.
        bad_images: ``(file_name, problem)`` of the images that cannot be read (only filled when
            ``skip_bad_images``; otherwise the first one raises).
    """

    json_file: str
    thing_classes: List[str]
    id_map: Dict[int, int]
    num_images: int
    num_annotations: int
    bad_images: List[Tuple[str, str]] = field(default_factory=list)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _load_json(json_file: str) -> dict:
    if not os.path.isfile(json_file):
        raise DatasetError(
            f"Annotation file {json_file} does not exist: check the path (relative paths are "
            f"relative to the current directory, {os.getcwd()})."
        )
    try:
        with open(json_file, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DatasetError(
            f"Annotation file {json_file} is not text ({e}): pass the COCO json, not an image or "
            "archive."
        ) from e
    except json.JSONDecodeError as e:
        hint = "it is empty" if e.doc.strip() == "" else f"line {e.lineno}, column {e.colno}"
        raise DatasetError(
            f"Annotation file {json_file} is not valid JSON ({e.msg}; {hint}). It may be "
            "truncated (an interrupted download or copy): export or download it again."
        ) from e
    if not isinstance(data, dict):
        raise DatasetError(
            f"Annotation file {json_file} holds a JSON {type(data).__name__}, not a COCO object "
            'with "images", "annotations" and "categories".'
        )
    return data


def _list_field(data: dict, key: str, json_file: str) -> list:
    value = data.get(key)
    if key not in data:
        present = ", ".join(repr(k) for k in data) or "nothing"
        raise DatasetError(
            f"Annotation file {json_file} has no {key!r} list (it holds {present}). A COCO "
            'detection file needs "images", "annotations" and "categories".'
        )
    if not isinstance(value, list):
        raise DatasetError(
            f"Annotation file {json_file}: {key!r} must be a list, got {type(value).__name__}."
        )
    return value


def _check_categories(data: dict, json_file: str) -> Tuple[List[str], Dict[int, int]]:
    cats = _list_field(data, "categories", json_file)
    if not cats:
        raise DatasetError(
            f"Annotation file {json_file} defines no categories: add e.g. "
            '"categories": [{"id": 1, "name": "my_class"}].'
        )
    by_id = {}
    for i, cat in enumerate(cats):
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or "name" not in cat:
            raise DatasetError(
                f"Annotation file {json_file}: category #{i} ({cat!r}) needs an integer 'id' and "
                "a 'name'."
            )
        if cat["id"] in by_id:
            raise DatasetError(
                f"Annotation file {json_file}: category id {cat['id']} is defined twice "
                f"({by_id[cat['id']]!r} and {cat['name']!r}): give each category its own id."
            )
        by_id[cat["id"]] = str(cat["name"])
    ids = sorted(by_id)
    return [by_id[i] for i in ids], {cat_id: i for i, cat_id in enumerate(ids)}


def _check_images(data: dict, json_file: str) -> Dict[int, dict]:
    images = _list_field(data, "images", json_file)
    if not images:
        raise DatasetError(
            f"Annotation file {json_file} has no images: a dataset needs at least one entry "
            '{"id", "file_name", "width", "height"} in "images".'
        )
    by_id = {}
    for i, img in enumerate(images):
        if not isinstance(img, dict) or not isinstance(img.get("id"), int):
            raise DatasetError(f"Annotation file {json_file}: image #{i} has no integer 'id'.")
        where = f"Annotation file {json_file}: image id {img['id']}"
        if not isinstance(img.get("file_name"), str) or not img["file_name"]:
            raise DatasetError(f"{where} has no 'file_name'.")
        for key in ("width", "height"):
            v = img.get(key)
            if not _is_number(v) or not math.isfinite(v) or v <= 0 or v != int(v):
                raise DatasetError(
                    f"{where} ({img['file_name']!r}) has {key}={v!r}: it must be the positive "
                    "pixel size of the image file."
                )
        if img["id"] in by_id:
            raise DatasetError(f"{where} appears twice in 'images': image ids must be unique.")
        by_id[img["id"]] = img
    return by_id


def _check_annotations(
    data: dict, json_file: str, images: Dict[int, dict], id_map: Dict[int, int]
) -> None:
    anns = _list_field(data, "annotations", json_file)
    for i, ann in enumerate(anns):
        if not isinstance(ann, dict):
            raise DatasetError(f"Annotation file {json_file}: annotation #{i} is not an object.")
        ann_id = ann.get("id", f"#{i}")
        where = f"Annotation file {json_file}: annotation id {ann_id}"
        img = images.get(ann.get("image_id"))
        if img is None:
            raise DatasetError(
                f"{where} refers to image_id {ann.get('image_id')!r}, which is not in 'images': "
                "fix its image_id or add the image."
            )
        where += f" (image id {img['id']}, {img['file_name']!r})"
        if ann.get("category_id") not in id_map:
            raise DatasetError(
                f"{where} has category_id {ann.get('category_id')!r}, which is not among the "
                f"file's categories {sorted(id_map)}: fix the annotation or add the category."
            )
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            raise DatasetError(f"{where} has no [x, y, width, height] 'bbox' (got {bbox!r}).")
        x, y, w, h = (float(v) for v in bbox)
        if not all(math.isfinite(v) for v in (x, y, w, h)):
            raise DatasetError(f"{where} has a non-finite bbox {bbox}: fix or remove it.")
        if w <= 0 or h <= 0:
            raise DatasetError(
                f"{where} has bbox {bbox} with width or height <= 0 (bbox is [x, y, width, "
                "height], not [x0, y0, x1, y1]): fix or remove it."
            )
        W, H = img["width"], img["height"]
        t = BOX_TOLERANCE
        if x < -t or y < -t or x + w > W + t or y + h > H + t:
            raise DatasetError(
                f"{where} has bbox {bbox} (x0, y0, x1, y1 = {x:g}, {y:g}, {x + w:g}, {y + h:g}) "
                f"outside its {W}x{H} image: fix the box, or the image's width/height."
            )


def checked_coco_annotations(json_file: str):
    """
    Load and check a COCO annotation file (not its images).

    Returns:
        (data, thing_classes, id_map, images): the parsed json, the category names in id order,
        json category id -> contiguous id, image id -> image entry.
    """
    data = _load_json(json_file)
    images = _check_images(data, json_file)
    thing_classes, id_map = _check_categories(data, json_file)
    _check_annotations(data, json_file, images, id_map)
    return data, thing_classes, id_map, images


def _exif_orientation(im) -> int:
    try:
        return int(im.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # broken EXIF block: detectron2 ignores it too
        return 1


def _png_damaged(path: str) -> Optional[str]:
    """What is wrong with a PNG's data, or None: its chunk checksums are checked and it is
    decoded (the compressed data of a PNG can break without touching its header or IEND)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            im.load()
    except Exception as e:  # PIL reports bad chunks as SyntaxError, struct.error, OSError
        return f"{type(e).__name__}: {e}"
    return None


def _tail_ok(path: str, fmt: Optional[str]) -> bool:
    """Whether a JPEG / PNG file ends with its end marker (a truncated copy does not)."""
    markers = {"JPEG": (b"\xff\xd9", 64), "PNG": (b"IEND", 64)}
    if fmt not in markers:
        return True
    marker, window = markers[fmt]
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - window))
        return marker in f.read()


def _decodes(path: str) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
        return True
    except OSError:
        return False


def check_image_file(path: str, width: int, height: int) -> Optional[str]:
    """
    Problem with one image file, or None: missing, not an image, truncated, damaged (a PNG that
    does not decode), or of another size than its annotation says (after EXIF rotation, as
    detectron2 reads it).

    JPEGs are not decoded (their decoder passes over damaged data): the header and the end of
    the file are read, the whole image only when its end marker is missing; PNGs are decoded.
    Thousands of images take seconds. The training reader (:func:`lite_detr.data.read_image`)
    decodes every image completely and raises for damage this check does not find.
    """
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        return "does not exist"
    try:
        with Image.open(path) as im:
            w, h = im.size
            fmt = im.format
            orientation = _exif_orientation(im)
            if orientation in (5, 6, 7, 8):  # a quarter turn: width and height swap
                w, h = h, w
    except UnidentifiedImageError:
        return "is not an image file PIL can read"
    except OSError as e:
        return f"cannot be read ({e})"
    if not _tail_ok(path, fmt) and not _decodes(path):  # some cameras append data after the end
        return f"is truncated (its {fmt} end marker is missing and it does not decode)"
    damage = _png_damaged(path) if fmt == "PNG" else None
    if damage is not None:
        return f"is a damaged PNG ({damage}): export or copy it again"
    if (w, h) != (width, height):
        if orientation in (5, 6, 7, 8) and (h, w) == (width, height):
            return (
                f"has EXIF orientation {orientation} (a quarter turn), so it is read as {w}x{h} "
                f"pixels, but its annotation says width={width}, height={height} (the stored, "
                f"unrotated size): set width={w}, height={h} in the json if its boxes are on the "
                "rotated picture (as viewers show it), or remove the image's EXIF orientation "
                "tag (e.g. exiftool -Orientation= FILE) if they are on the stored pixels"
            )
        return f"is {w}x{h} pixels but its annotation says width={width}, height={height}"
    return None


def check_coco_json(
    json_file: str,
    image_root: str,
    check_images: bool = True,
    skip_bad_images: bool = False,
) -> CocoDatasetSummary:
    """
    Check a COCO-format detection dataset; raise :class:`DatasetError` at the first problem.

    Checked: the file exists and is JSON with ``images`` (non-empty), ``annotations`` and
    ``categories`` (non-empty, unique integer ids); every image has an id, a file name and a
    positive size; every annotation names a known image and category and has a finite
    ``[x, y, w, h]`` box with ``w, h > 0`` inside its image (1 px tolerance); with
    ``check_images``, every image file exists, is an image, is not truncated and has the size its
    annotation gives.

    Args:
        json_file (str): the annotation file.
        image_root (str): the folder the images' ``file_name`` are relative to.
        check_images (bool): also check the image files.
        skip_bad_images (bool): collect unreadable images in ``bad_images`` instead of raising.
    """
    data, thing_classes, id_map, images = checked_coco_annotations(json_file)
    num_anns = len(data["annotations"])
    summary = CocoDatasetSummary(json_file, thing_classes, id_map, len(images), num_anns)
    if not check_images:
        return summary
    if not os.path.isdir(image_root):
        raise DatasetError(
            f"Image folder {image_root} (for {json_file}) does not exist: pass the folder that "
            "the images' file_name are relative to."
        )
    from tqdm import tqdm

    imgs = list(images.values())

    def check(img):
        path = os.path.join(image_root, img["file_name"])
        return img, path, check_image_file(path, int(img["width"]), int(img["height"]))

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = pool.map(check, imgs)
        for img, path, problem in tqdm(
            results,
            total=len(imgs),
            desc=f"Checking images of {os.path.basename(json_file)}",
            unit="img",
            mininterval=2.0,
            disable=len(imgs) < 2000,
        ):
            if problem is None:
                continue
            if not skip_bad_images:
                raise DatasetError(
                    f"Image {path} (image id {img['id']} in {json_file}) {problem}. Fix or remove "
                    "the image (and its entry in the json), or add train.skip_bad_images=True to "
                    "skip such images with a warning."
                )
            summary.bad_images.append((path, problem))
    return summary
