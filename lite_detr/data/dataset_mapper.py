"""Dataset mapper with the DETR augmentation recipe (flip, multi-scale resize, random crop)."""

import copy
import logging
from typing import List

import numpy as np
import torch
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from .image_io import read_image

__all__ = ["DetrDatasetMapper", "build_detr_augmentation", "build_resize_augmentation"]

logger = logging.getLogger(__name__)


def _scaled(sizes, factor: float) -> List[int]:
    return [max(1, int(round(s * factor))) for s in sizes]


def build_detr_augmentation(
    min_sizes=(480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800),
    max_size: int = 1333,
    crop_resize_sizes=(400, 500, 600),
    crop_size=(384, 600),
    with_crop: bool = False,
    input_size: int | None = None,
) -> List[T.Augmentation]:
    """
    The DETR training augmentation (Carion et al. 2020, Sec. A.4), used by Deformable DETR/DINO.

    Without crop: random horizontal flip, then resize the short side to one of ``min_sizes``
    (long side <= ``max_size``). With crop: flip, resize the short side to one of
    ``crop_resize_sizes``, take a random crop of size in ``crop_size`` (absolute range), then the
    multi-scale resize. :class:`DetrDatasetMapper` picks one of the two lists per image at random.

    ``input_size`` (the test-time short side, 800 for the sizes above) scales every size by
    ``input_size / 800``: ``input_size=512`` trains on short sides 307..512, long side <= 853.
    """
    if input_size is not None:
        factor = input_size / 800
        min_sizes, crop_resize_sizes = _scaled(min_sizes, factor), _scaled(
            crop_resize_sizes, factor
        )
        (max_size,), crop_size = _scaled([max_size], factor), _scaled(crop_size, factor)
    flip = T.RandomFlip(horizontal=True)
    resize = T.ResizeShortestEdge(
        short_edge_length=list(min_sizes), max_size=max_size, sample_style="choice"
    )
    if not with_crop:
        return [flip, resize]
    return [
        flip,
        T.ResizeShortestEdge(short_edge_length=list(crop_resize_sizes), sample_style="choice"),
        T.RandomCrop(crop_type="absolute_range", crop_size=tuple(crop_size)),
        resize,
    ]


def build_resize_augmentation(
    input_size: int,
    max_size_ratio: float = 5 / 3,
    scales=(1.0,),
    flip: bool = False,
) -> List[T.Augmentation]:
    """
    Resize the short side to ``input_size`` times one of ``scales`` (long side at most
    ``max_size_ratio * input_size``), after a random horizontal flip if ``flip``.

    One ``input_size`` sets training (``scales=(0.8, 0.9, 1.0), flip=True``) and test
    (``scales=(1.0,)``) resolution together: ``dataloader.input_size=512`` in the configs.
    """
    augs: List[T.Augmentation] = [T.RandomFlip(horizontal=True)] if flip else []
    sizes = _scaled(scales, input_size)
    (max_size,) = _scaled([max_size_ratio], input_size)
    if len(sizes) == 1:
        augs.append(T.ResizeShortestEdge(short_edge_length=sizes[0], max_size=max_size))
    else:
        augs.append(
            T.ResizeShortestEdge(short_edge_length=sizes, max_size=max_size, sample_style="choice")
        )
    return augs


class DetrDatasetMapper:
    """
    Map a detectron2 dataset dict to the model's input: ``image`` (C, H, W) uint8 tensor in
    ``image_format`` and, in training, ``instances`` with ``gt_boxes`` / ``gt_classes``.

    In training, with probability 0.5 ``augmentation_with_crop`` is used instead of
    ``augmentation`` (the DETR random-crop recipe); boxes cut down to nothing by the crop are
    dropped. At test time only ``augmentation`` is applied and annotations are removed.
    """

    def __init__(
        self,
        *,
        is_train: bool = True,
        augmentation: List[T.Augmentation],
        augmentation_with_crop: List[T.Augmentation] | None = None,
        image_format: str = "RGB",
        crop_prob: float = 0.5,
    ):
        """
        Args:
            is_train (bool): training (annotations kept, crop recipe used) or inference.
            augmentation (list[Augmentation]): the default augmentation list.
            augmentation_with_crop (list[Augmentation], optional): the crop recipe, chosen with
                probability ``crop_prob`` in training.
            image_format (str): format the model expects ("RGB" or "BGR").
            crop_prob (float): probability of using ``augmentation_with_crop``.
        """
        if image_format not in ("RGB", "BGR"):
            raise ValueError(
                f"DetrDatasetMapper: image_format must be 'RGB' or 'BGR', got {image_format!r}"
            )
        self.is_train = is_train
        self.augmentation = T.AugmentationList(list(augmentation))
        self.augmentation_with_crop = (
            T.AugmentationList(list(augmentation_with_crop)) if augmentation_with_crop else None
        )
        self.image_format = image_format
        self.crop_prob = crop_prob
        mode = "training" if is_train else "inference"
        logger.info(f"[DetrDatasetMapper] {mode} augmentation: {augmentation}")
        if is_train and self.augmentation_with_crop is not None:
            logger.info(f"[DetrDatasetMapper] crop augmentation: {augmentation_with_crop}")

    def __call__(self, dataset_dict):
        """
        Args:
            dataset_dict (dict): one image's metadata in detectron2 dataset format.

        Returns:
            dict: the format detectron2 models take.
        """
        dataset_dict = copy.deepcopy(dataset_dict)
        file_name = dataset_dict["file_name"]
        try:
            image = read_image(file_name, format=self.image_format)
        except Exception as e:
            raise OSError(
                f"Cannot read image {file_name!r} ({type(e).__name__}: {e}). "
                "Check that the file exists and is a valid image, or regenerate/re-download "
                "the dataset."
            ) from e
        utils.check_image_size(dataset_dict, image)

        aug_input = T.AugInput(image)
        use_crop = (
            self.is_train
            and self.augmentation_with_crop is not None
            and np.random.rand() < self.crop_prob
        )
        transforms = (self.augmentation_with_crop if use_crop else self.augmentation)(aug_input)
        image = aug_input.image
        image_shape = image.shape[:2]  # h, w
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))

        if not self.is_train:
            dataset_dict.pop("annotations", None)
            return dataset_dict

        if "annotations" in dataset_dict:
            annos = [
                utils.transform_instance_annotations(obj, transforms, image_shape)
                for obj in dataset_dict.pop("annotations")
                if obj.get("iscrowd", 0) == 0
            ]
            for obj in annos:  # boxes only: DETR-family detectors here predict no masks
                obj.pop("segmentation", None)
                obj.pop("keypoints", None)
            instances = utils.annotations_to_instances(annos, image_shape)
            dataset_dict["instances"] = utils.filter_empty_instances(instances)
        return dataset_dict
