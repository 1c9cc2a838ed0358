"""
A synthetic detection dataset of coloured shapes, generated on first use.

Circles, rectangles, triangles and stars in random colours and sizes (many of them small,
< 32x32 px: the case KDA targets) on noisy, textured backgrounds, with partial occlusion.
Images are JPEG, annotations COCO json, so the standard COCO tooling (pycocotools,
``COCOEvaluator``) applies unchanged.

Generation is deterministic (fixed seed) and atomic: it writes into a temporary folder under
the same parent, writes ``MANIFEST.json`` last and renames the folder into place. A folder
without a matching manifest (an interrupted or older generation) is never used: it is moved
aside, removed and regenerated; temporary folders of killed generations are removed. A complete
folder whose annotation files were changed afterwards is refused with "delete it to regenerate".
"""

import json
import logging
import math
import os
import shutil
import time
from typing import Dict, List, Optional

import numpy as np
from PIL import Image, ImageDraw

from lite_detr.utils import publish_folder, remove_stale_temporaries, temporary_path

from .coco_check import DatasetError, checked_coco_annotations
from .coco_json import load_coco_detection_json

__all__ = [
    "SHAPES_CLASSES",
    "LOCK_TIMEOUT_S",
    "check_shapes_dataset",
    "generate_shapes_dataset",
    "ensure_shapes_dataset",
    "register_shapes",
    "shapes_dataset_dir",
]

logger = logging.getLogger(__name__)

SHAPES_CLASSES = ["circle", "rectangle", "triangle", "star"]
_FORMAT_VERSION = 1
_MANIFEST = "MANIFEST.json"
# how long a process waits for another one that generates the same dataset (the default
# 2000 + 200 images take about a minute on one core)
LOCK_TIMEOUT_S = 1800.0


def shapes_dataset_dir(name: str = "shapes", root: Optional[str] = None) -> str:
    """Folder of dataset ``name``: ``$DETECTRON2_DATASETS/<name>`` (default ``./datasets``)."""
    root = root if root is not None else os.getenv("DETECTRON2_DATASETS", "datasets")
    return os.path.abspath(os.path.join(root, name))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A low-frequency colour gradient plus stripes/blobs texture plus pixel noise, uint8 HWC."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = rng.uniform(40, 215, size=3)
    grad = rng.uniform(-50, 50, size=(2, 3))
    img = base + xx[..., None] * grad[0] + yy[..., None] * grad[1]
    # a random sinusoidal texture so the background is not flat
    freq = rng.uniform(4, 20, size=2)
    phase = rng.uniform(0, 2 * np.pi)
    tex = np.sin(2 * np.pi * (freq[0] * xx + freq[1] * yy) + phase)
    img += tex[..., None] * rng.uniform(5, 25)
    img += rng.normal(0, rng.uniform(4, 14), size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _colour(rng: np.random.Generator, avoid: np.ndarray) -> tuple:
    """A random colour at least some distance away from the local background colour."""
    for _ in range(20):
        c = rng.integers(0, 256, size=3)
        if np.abs(c - avoid).sum() > 150:
            break
    return tuple(int(v) for v in c)


def _polygon(cls: str, cx: float, cy: float, w: float, h: float, angle: float) -> List[tuple]:
    if cls == "rectangle":
        pts = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
    elif cls == "triangle":
        pts = [(math.cos(a), math.sin(a)) for a in (angle + k * 2 * math.pi / 3 for k in range(3))]
    elif cls == "star":
        pts = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else 0.45
            a = angle + k * math.pi / 5
            pts.append((r * math.cos(a), r * math.sin(a)))
    else:
        raise ValueError(cls)
    return [(cx + x * w / 2, cy + y * h / 2) for x, y in pts]


def _sample_size(rng: np.random.Generator, image_size: int) -> float:
    u = rng.random()
    if u < 0.35:  # small (< 32 px): the regime where fine, low-level tokens matter
        return rng.uniform(12, 30)
    if u < 0.85:
        return rng.uniform(32, min(90, 0.5 * image_size))
    return rng.uniform(min(90, 0.5 * image_size), min(160, 0.6 * image_size))


def _ioa(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Fraction of each of ``boxes`` (K, 4 XYXY) covered by ``box`` (4,)."""
    if len(boxes) == 0:
        return np.zeros(0)
    lt = np.maximum(box[:2], boxes[:, :2])
    rb = np.minimum(box[2:], boxes[:, 2:])
    inter = np.clip(rb - lt, 0, None).prod(1)
    area = (boxes[:, 2:] - boxes[:, :2]).prod(1)
    return inter / area


def _make_image(rng: np.random.Generator, size: int):
    img = _background(rng, size)
    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    boxes, anns = [], []
    for _ in range(int(rng.integers(3, 11))):
        for _try in range(30):
            cls_id = int(rng.integers(0, len(SHAPES_CLASSES)))
            cls = SHAPES_CLASSES[cls_id]
            s = _sample_size(rng, size)
            aspect = rng.uniform(0.5, 2.0) if cls == "rectangle" else rng.uniform(0.85, 1.15)
            w = min(s * math.sqrt(aspect), size - 4)
            h = min(s / math.sqrt(aspect), size - 4)
            angle = rng.uniform(0, 2 * math.pi)
            cx, cy = rng.uniform(w / 2 + 1, size - w / 2 - 1), rng.uniform(
                h / 2 + 1, size - h / 2 - 1
            )
            if cls == "circle":
                pts = None
                box = np.array([cx - w / 2, cy - w / 2, cx + w / 2, cy + w / 2])
                if box[0] < 0 or box[1] < 0 or box[2] > size or box[3] > size:
                    continue
            else:
                pts = _polygon(cls, cx, cy, w, h, angle)
                arr = np.array(pts)
                box = np.concatenate([arr.min(0), arr.max(0)])
            if min(box[2] - box[0], box[3] - box[1]) < 6:
                continue
            # partial occlusion only: a new shape may cover at most 40% of any earlier one
            if len(boxes) and _ioa(box, np.array(boxes)).max() > 0.4:
                continue
            x0, y0 = int(max(box[0], 0)), int(max(box[1], 0))
            local = img[y0 : int(box[3]) + 1, x0 : int(box[2]) + 1].reshape(-1, 3).mean(0)
            fill = _colour(rng, local)
            if pts is None:
                draw.ellipse([tuple(box[:2]), tuple(box[2:])], fill=fill)
            else:
                draw.polygon(pts, fill=fill)
            boxes.append(box)
            anns.append((cls_id, box))
            break
    return pil, anns


def generate_shapes_dataset(
    out_dir: str,
    num_train: int = 2000,
    num_val: int = 200,
    image_size: int = 320,
    seed: int = 0,
) -> None:
    """
    Generate the dataset into ``out_dir`` atomically (temporary folder, manifest, rename).

    Args:
        out_dir (str): final dataset folder; must not exist.
        num_train, num_val (int): number of images per split.
        image_size (int): side of the square images in pixels.
        seed (int): random seed; the same arguments give the same dataset.
    """
    from pycocotools.coco import COCO
    from tqdm import tqdm

    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = temporary_path(out_dir)
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(os.path.join(tmp, "annotations"))
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(SHAPES_CLASSES)]
    manifest: Dict = {
        "format_version": _FORMAT_VERSION,
        "seed": seed,
        "image_size": image_size,
        "splits": {},
    }
    for split_idx, (split, num) in enumerate((("train", num_train), ("val", num_val))):
        os.makedirs(os.path.join(tmp, split))
        rng = np.random.default_rng([seed, split_idx])
        images, annotations = [], []
        for i in tqdm(range(num), desc=f"Generating shapes {split}", unit="img", mininterval=2.0):
            pil, anns = _make_image(rng, image_size)
            file_name = f"{split}/{i:06d}.jpg"
            pil.save(os.path.join(tmp, file_name), quality=92)
            images.append(
                {"id": i + 1, "file_name": file_name, "height": image_size, "width": image_size}
            )
            for cls_id, box in anns:
                x0, y0, x1, y1 = (round(float(v), 2) for v in box)
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": i + 1,
                        "category_id": cls_id + 1,
                        "bbox": [x0, y0, round(x1 - x0, 2), round(y1 - y0, 2)],
                        "area": round((x1 - x0) * (y1 - y0), 2),
                        "iscrowd": 0,
                    }
                )
        json_file = os.path.join(tmp, "annotations", f"instances_{split}.json")
        with open(json_file, "w") as f:
            json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
        # validate with pycocotools before the folder can ever be used
        coco = COCO(json_file)
        assert len(coco.getImgIds()) == num and len(coco.getAnnIds()) == len(annotations)
        manifest["splits"][split] = {"num_images": num, "num_annotations": len(annotations)}
    with open(os.path.join(tmp, _MANIFEST), "w") as f:
        json.dump(manifest, f, indent=2)
    publish_folder(tmp, out_dir)


def _is_complete(out_dir: str, num_train: int, num_val: int, image_size: int, seed: int) -> bool:
    """Whether ``out_dir`` holds a complete generation with these parameters."""
    try:
        with open(os.path.join(out_dir, _MANIFEST)) as f:
            m = json.load(f)
        ok = (
            m["format_version"] == _FORMAT_VERSION
            and m["seed"] == seed
            and m["image_size"] == image_size
            and m["splits"]["train"]["num_images"] == num_train
            and m["splits"]["val"]["num_images"] == num_val
        )
        for split, num in (("train", num_train), ("val", num_val)):
            ok = ok and os.path.isfile(
                os.path.join(out_dir, "annotations", f"instances_{split}.json")
            )
            ok = ok and len(os.listdir(os.path.join(out_dir, split))) == num
        return bool(ok)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _datasets_variable() -> str:
    env = os.environ.get("DETECTRON2_DATASETS")
    return f" ($DETECTRON2_DATASETS={env!r})" if env else ""


def _lock_path(out_dir: str) -> str:
    """The lock file that serialises the generation of ``out_dir``, created if it is missing;
    ``OSError`` naming ``$DETECTRON2_DATASETS`` where it cannot be (a read-only folder, /proc),
    instead of a lock that waits forever."""
    parent = os.path.dirname(os.path.abspath(out_dir))
    path = os.path.join(parent, f".{os.path.basename(out_dir)}.lock")
    try:
        os.makedirs(parent, exist_ok=True)
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o666))
    except OSError as e:
        raise OSError(
            f"Cannot generate the shapes dataset in {out_dir}: cannot create {path}"
            f"{_datasets_variable()}: {e.strerror}. Point $DETECTRON2_DATASETS at a writable "
            "folder (or unset it to use ./datasets)."
        ) from e
    return path


def _damaged_message(out_dir: str, e: DatasetError) -> str:
    first = str(e).split(". ")[0].rstrip(".")
    return (
        f"The shapes dataset in {out_dir} was changed after it was generated ({first}). "
        f"Regenerate it: delete {out_dir} (the next run generates it again)."
    )


def check_shapes_dataset(
    out_dir: str,
    num_train: int = 2000,
    num_val: int = 200,
    image_size: int = 320,
    seed: int = 0,
) -> None:
    """
    What the first use of the dataset would fail on, without generating it: a complete folder
    whose annotation files were changed afterwards, or, where it must be generated, a datasets
    folder in which the generation cannot take its lock. Raises :class:`DatasetError`.
    """
    if _is_complete(out_dir, num_train, num_val, image_size, seed):
        for split in ("train", "val"):
            json_file = os.path.join(out_dir, "annotations", f"instances_{split}.json")
            try:
                checked_coco_annotations(json_file)
            except DatasetError as e:
                raise DatasetError(_damaged_message(out_dir, e)) from e
        return
    try:
        _lock_path(out_dir)
    except OSError as e:
        raise DatasetError(str(e)) from e


def ensure_shapes_dataset(
    out_dir: str,
    num_train: int = 2000,
    num_val: int = 200,
    image_size: int = 320,
    seed: int = 0,
) -> str:
    """
    Make sure a complete dataset with these parameters is in ``out_dir``; generate it if not.

    Safe across processes (a file lock serialises generation, e.g. between DDP workers; a process
    waits at most :data:`LOCK_TIMEOUT_S` for another one's generation, then raises ``OSError``).
    A folder that is incomplete or was made with other parameters is removed and regenerated.

    Returns:
        str: ``out_dir``.
    """
    from filelock import FileLock, Timeout

    args = (num_train, num_val, image_size, seed)
    if _is_complete(out_dir, *args):
        return out_dir
    lock_path = _lock_path(out_dir)
    parent = os.path.dirname(lock_path)
    try:
        with FileLock(lock_path, timeout=LOCK_TIMEOUT_S):
            remove_stale_temporaries(parent)  # folders of generations that were killed
            if _is_complete(out_dir, *args):  # another process finished while we waited
                return out_dir
            if os.path.exists(out_dir):
                logger.warning(
                    f"{out_dir} is incomplete (interrupted generation) or was generated with "
                    "other parameters: removing it and generating again."
                )
                trash = f"{out_dir}.stale-{os.getpid()}-{int(time.time())}"
                os.rename(out_dir, trash)
                shutil.rmtree(trash, ignore_errors=True)
            logger.info(
                f"Generating the shapes dataset into {out_dir} ({num_train}/{num_val} images)"
            )
            generate_shapes_dataset(out_dir, *args)
    except Timeout as e:
        raise OSError(
            f"Waited {LOCK_TIMEOUT_S:g} s for {lock_path}: another process has been generating "
            f"{out_dir} for that long. Stop it (or wait for it), then run again."
        ) from e
    return out_dir


def register_shapes(
    name: str = "shapes",
    root: Optional[str] = None,
    num_train: int = 2000,
    num_val: int = 200,
    image_size: int = 320,
    seed: int = 0,
) -> None:
    """
    Register ``<name>_train`` and ``<name>_val`` in detectron2's catalogs.

    Nothing is generated here: the data is generated (or validated) on the first
    ``DatasetCatalog.get``.

    Args:
        name (str): dataset name prefix and folder name under ``root``.
        root (str, optional): datasets root; default ``$DETECTRON2_DATASETS`` or ``./datasets``.
        num_train, num_val, image_size, seed: see :func:`generate_shapes_dataset`.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    out_dir = shapes_dataset_dir(name, root)
    gen_args = (num_train, num_val, image_size, seed)
    for split in ("train", "val"):
        split_name = f"{name}_{split}"
        json_file = os.path.join(out_dir, "annotations", f"instances_{split}.json")

        def _load(split_name=split_name, json_file=json_file):
            ensure_shapes_dataset(out_dir, *gen_args)
            try:
                return load_coco_detection_json(json_file, out_dir, split_name)
            except DatasetError as e:
                raise DatasetError(_damaged_message(out_dir, e)) from e

        DatasetCatalog.register(split_name, _load)
        MetadataCatalog.get(split_name).set(
            thing_classes=list(SHAPES_CLASSES),
            thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(SHAPES_CLASSES))},
            evaluator_type="coco",
            json_file=json_file,
            image_root=out_dir,
            dataset_dir=out_dir,
            generate_on_first_use=True,  # json_file may not exist yet: that is expected
            # check_shapes_dataset's arguments, for the checks before training
            shapes_generation=dict(
                num_train=num_train, num_val=num_val, image_size=image_size, seed=seed
            ),
        )
