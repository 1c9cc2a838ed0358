"""
COCO-format datasets of your own: registration from the config, checks before training.

A config may hold a top-level ``datasets`` node (see ``configs/common/data/coco_format.py``)::

    datasets = dict(
        train=dict(name="custom_train", json_file="train.json", image_root="train/"),
        val=dict(name="custom_val", json_file="val.json", image_root="val/"),
    )

:func:`prepare_datasets` registers every entry that has a ``json_file`` (as detectron2's
``register_coco_instances`` does, with the strict loader), checks the datasets the dataloaders
name, whoever registered them, and takes ``model.num_classes`` and the class names from the json.
"""

import logging
import os
from typing import Dict, List, Optional, Tuple

from omegaconf import DictConfig, OmegaConf

from .coco_check import DatasetError, check_coco_json
from .coco_json import load_coco_detection_json
from .shapes import check_shapes_dataset

__all__ = [
    "register_coco_format",
    "register_config_datasets",
    "prepare_datasets",
    "dataset_names",
    "unregistered_message",
    "fill_num_classes",
]

logger = logging.getLogger(__name__)


def register_coco_format(name: str, json_file: str, image_root: str) -> None:
    """
    Register a COCO-format detection dataset under ``name`` (like detectron2's
    ``register_coco_instances``, with :func:`load_coco_detection_json`).

    Registering the same files again is a no-op; other files under a registered name replace it
    (with a log line), so ``name`` may be one of detectron2's built-in names.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    json_file, image_root = os.path.abspath(json_file), os.path.abspath(image_root)
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        if meta.get("json_file") == json_file and meta.get("image_root") == image_root:
            return
        logger.info(f"Dataset {name!r} now refers to {json_file} (was {meta.get('json_file')}).")
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: load_coco_detection_json(json_file, image_root, name))
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="coco")


def dataset_names(loader_cfg) -> List[str]:
    """The dataset names of a ``dataloader.train`` / ``dataloader.test`` node."""
    dataset = loader_cfg.get("dataset") if OmegaConf.is_dict(loader_cfg) else None
    if not OmegaConf.is_dict(dataset) or "names" not in dataset:
        return []
    names = dataset.names
    return [names] if isinstance(names, str) else list(names)


def register_config_datasets(cfg: DictConfig) -> None:
    """Register the entries of the config's ``datasets`` node that have a ``json_file``."""
    node = cfg.get("datasets")
    if not OmegaConf.is_dict(node):
        return
    for split, entry in node.items():
        if not OmegaConf.is_dict(entry):
            continue
        if not entry.get("json_file"):
            continue
        if not entry.get("image_root"):
            raise DatasetError(
                f"datasets.{split}.json_file is set but datasets.{split}.image_root is not: add "
                f"datasets.{split}.image_root=FOLDER (the folder the json's file_name are in)."
            )
        if not entry.get("name"):
            raise DatasetError(f"datasets.{split}.name is empty: give the dataset a name.")
        register_coco_format(entry.name, entry.json_file, entry.image_root)


def unregistered_message(cfg: DictConfig, name: str, split: str) -> str:
    """The message for a dataset name that ``dataloader.<split>`` uses but nobody registered."""
    import difflib

    from detectron2.data import DatasetCatalog

    node = cfg.get("datasets")
    for key, entry in node.items() if OmegaConf.is_dict(node) else []:
        if OmegaConf.is_dict(entry) and entry.get("name") == name:
            return (
                f"Dataset {name!r} (datasets.{key}) has no annotation file: add "
                f"datasets.{key}.json_file=FILE.json datasets.{key}.image_root=FOLDER (a "
                "COCO-format json and the folder its images' file_name are relative to)."
            )
    close = difflib.get_close_matches(name, sorted(DatasetCatalog.list()), n=3)
    return (
        f"Dataset {name!r} (dataloader.{split}.dataset.names) is not registered. Similar "
        f"registered names: {close or 'none'}. For COCO-format data, name its files with "
        "overrides on a config that has a 'datasets' node (datasets.train.json_file=... "
        "datasets.train.image_root=..., same for datasets.val; README: 'Train on your own "
        "data'), or call detectron2's register_coco_instances in your own config file, which "
        "loads ours with lite_detr.model_zoo.get_config."
    )


def _skip_images(name: str, bad: List) -> None:
    from detectron2.data import DatasetCatalog

    bad_files = {path for path, _ in bad}
    load = DatasetCatalog[name]  # the registered loader (DatasetCatalog is a dict)
    DatasetCatalog.remove(name)
    DatasetCatalog.register(name, lambda: [d for d in load() if d["file_name"] not in bad_files])
    shown = "; ".join(f"{p} {why}" for p, why in bad[:5])
    more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
    logger.warning(
        f"Dataset {name!r}: skipping {len(bad)} unreadable image(s) "
        f"(train.skip_bad_images=True): {shown}{more}"
    )


def _classes_of(
    name: str, check_images: bool, skip_bad_images: bool, boxes: Dict[str, Tuple[str, int, int]]
) -> Optional[List[str]]:
    """The class names of dataset ``name`` (checked); its (json, images, boxes) counts go into
    ``boxes`` when its json was read."""
    from detectron2.data import MetadataCatalog

    meta = MetadataCatalog.get(name)
    json_file, image_root = meta.get("json_file"), meta.get("image_root")
    if not check_images and meta.get("thing_classes") and not os.path.isfile(json_file or ""):
        return meta.get("thing_classes")  # inference needs the names only (e.g. COCO's)
    if check_images and meta.get("shapes_generation") is not None:
        check_shapes_dataset(meta.dataset_dir, **meta.shapes_generation)
    if json_file and image_root and not meta.get("generate_on_first_use", False):
        summary = check_coco_json(json_file, image_root, check_images, skip_bad_images)
        boxes[name] = (json_file, summary.num_images, summary.num_annotations)
        if meta.get("thing_classes") is None:  # e.g. register_coco_instances(name, {}, ...)
            meta.thing_classes = summary.thing_classes
            meta.thing_dataset_id_to_contiguous_id = summary.id_map
        if summary.bad_images:
            _skip_images(name, summary.bad_images)
        if check_images:
            logger.info(
                f"Dataset {name!r}: {json_file} checked, {summary.num_images} images, "
                f"{summary.num_annotations} boxes, {len(summary.thing_classes)} classes "
                f"{summary.thing_classes[:10]}{' ...' if len(summary.thing_classes) > 10 else ''}"
            )
    return meta.get("thing_classes")


def prepare_datasets(
    cfg: DictConfig,
    splits=("train", "test"),
    check_images: bool = True,
    skip_bad_images: bool = False,
) -> Dict[str, List[str]]:
    """
    Register the config's ``datasets`` entries, check the datasets ``dataloader.<split>`` names
    and reconcile ``model.num_classes`` with their classes. Raises :class:`DatasetError`.

    * Datasets with a ``json_file`` and ``image_root`` in their metadata (ours, and those of
      ``register_coco_instances``) are checked with :func:`check_coco_json`; their class names
      go into the metadata when it has none (evaluation and ``tools/demo.py`` use them).
    * ``model.num_classes: null`` becomes the number of classes of the first split; a number
      that disagrees with it is an error, as are splits with different classes.
    * With ``check_images`` (the checks before training), training datasets whose json files
      hold no annotations at all are an error: there is nothing to train on.

    Args:
        cfg: the LazyConfig (modified: ``model.num_classes`` may be filled in).
        splits: the dataloaders whose datasets are used.
        check_images (bool): also check the image files (not needed for inference).
        skip_bad_images (bool): skip unreadable images with a warning instead of failing.

    Returns:
        dict: dataset name -> class names (datasets with known classes only).
    """
    from detectron2.data import DatasetCatalog

    register_config_datasets(cfg)
    classes: Dict[str, List[str]] = {}
    boxes: Dict[str, Tuple[str, int, int]] = {}
    registered = set(DatasetCatalog.list())
    for split in splits:
        loader = cfg.get("dataloader", {}).get(split)
        names = dataset_names(loader) if loader is not None else []
        for name in names:
            if name not in registered:
                raise DatasetError(unregistered_message(cfg, name, split))
            if name not in classes:
                found = _classes_of(name, check_images, skip_bad_images, boxes)
                if found is not None:
                    classes[name] = list(found)
        counted = [boxes[n] for n in names if n in boxes]
        no_boxes = counted and len(counted) == len(names) and sum(c[2] for c in counted) == 0
        if split == "train" and check_images and no_boxes:  # training checks only
            # detectron2's loader would drop every image and assert "No valid data found"
            files = ", ".join(
                f"{json_file} ({num_images} images)" for json_file, num_images, _ in counted
            )
            raise DatasetError(
                f"dataloader.train has nothing to train on: {files} holds no annotations. Add "
                "boxes to its 'annotations' list, or name an annotated json for training."
            )
    model = cfg.get("model")
    num_classes = model.get("num_classes", 0) if OmegaConf.is_dict(model) else 0
    if not classes:
        if num_classes is None:
            raise DatasetError(
                "model.num_classes is null (taken from the dataset) but the config names no "
                "registered dataset: name the data (datasets.train.json_file=... "
                "datasets.train.image_root=...) or add model.num_classes=N."
            )
        return classes
    (first, first_classes), *others = classes.items()
    for name, names in others:
        if names != first_classes:
            raise DatasetError(
                f"Datasets {first!r} and {name!r} have different classes ({first_classes} vs "
                f"{names}): train and evaluate on annotation files with the same categories."
            )
    if OmegaConf.is_dict(model) and "num_classes" in model:
        n = num_classes
        if n is None:
            model.num_classes = len(first_classes)
            logger.info(f"model.num_classes = {len(first_classes)} (from dataset {first!r})")
        elif n != len(first_classes):
            raise DatasetError(
                f"model.num_classes={n} but dataset {first!r} has {len(first_classes)} classes "
                f"{first_classes[:10]}: add model.num_classes={len(first_classes)} (or "
                "model.num_classes=null to take it from the dataset)."
            )
    return classes


def fill_num_classes(cfg: DictConfig) -> None:
    """
    ``model.num_classes: null`` -> the number of classes of the first dataloader (train, then
    test) whose datasets are registered; tools that only build the model need no more.
    """
    from detectron2.data import DatasetCatalog

    if OmegaConf.select(cfg, "model.num_classes", default=0) is not None:
        return
    registered = set(DatasetCatalog.list())
    for split in ("train", "test"):
        loader = cfg.get("dataloader", {}).get(split)
        names = dataset_names(loader) if loader is not None else []
        if names and all(n in registered for n in names):
            prepare_datasets(cfg, (split,), check_images=False)
            return
    prepare_datasets(cfg, ("train",), check_images=False)  # raises: says what to register
