"""Single-image inference with a config's model and test-time resize, as detectron2's
``DefaultPredictor``."""

import os

import numpy as np
import torch
from detectron2.config import instantiate
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T

from ..checkpoint import LiteDetrCheckpointer
from ..config import ConfigError, config_error_on_bad_checkpoint
from ..data.image_io import read_image
from ..deploy import optimize_for_cpu_inference
from ..precision import bf16_inference, resolve_precision

__all__ = ["Predictor", "read_rgb"]


class Predictor:
    """
    Single-image inference with the config's test-time resize; inputs are RGB uint8 HWC arrays,
    outputs the ``Instances`` of the image (boxes in input pixels, on the CPU). On the CPU the
    model is deployed with :func:`lite_detr.deploy.optimize_for_cpu_inference` (outputs differ
    from the plain model's by float rounding).

    Args:
        cfg: LazyConfig with ``model``, ``dataloader.test`` and ``train.device``.
        weights (str): checkpoint path ("" keeps the random initialisation). A missing file, a
            file that is not a checkpoint and weights of another variant raise
            :class:`~lite_detr.config.ConfigError`.
        precision (str): "fp32", or "bf16": bfloat16 autocast on a CPU with bfloat16
            instructions, heads and sampling in float32 (:mod:`lite_detr.precision`); on a CPU
            without them one logged line and fp32. :attr:`precision` is the one it runs in.

    Example::

        predictor = Predictor(load_config(config_file), "model_final.pth")
        instances = predictor(read_rgb("image.jpg"))
    """

    def __init__(self, cfg, weights: str, precision: str = "fp32"):
        try:
            self.precision = resolve_precision(precision, str(cfg.train.device))
        except ValueError as e:
            raise ConfigError(f"{e}.") from e
        self.model = instantiate(cfg.model).to(cfg.train.device).eval()
        if weights:
            if not os.path.isfile(weights):
                raise ConfigError(f"Weights {weights!r} do not exist: pass --weights FILE.pth.")
            with config_error_on_bad_checkpoint(weights):
                LiteDetrCheckpointer(self.model).load(weights)
        if str(cfg.train.device).startswith("cpu"):
            optimize_for_cpu_inference(self.model)
        mapper = cfg.dataloader.test.mapper
        self.augmentation = T.AugmentationList(list(instantiate(mapper.augmentation)))
        self.input_format = mapper.get("image_format", "RGB")
        names = cfg.dataloader.test.dataset.names
        self.metadata = MetadataCatalog.get(names if isinstance(names, str) else names[0])

    @torch.no_grad()
    def __call__(self, rgb: np.ndarray):
        """
        Args:
            rgb (ndarray): (H, W, 3) uint8 image, RGB.

        Returns:
            Instances: ``pred_boxes`` (XYXY in input pixels), ``scores``, ``pred_classes``.
        """
        h, w = rgb.shape[:2]
        aug = T.AugInput(rgb)
        self.augmentation(aug)
        image = aug.image if self.input_format == "RGB" else aug.image[:, :, ::-1]
        tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        with bf16_inference(self.model, self.precision):
            outputs = self.model([{"image": tensor, "height": h, "width": w}])
        return outputs[0]["instances"].to("cpu")


def read_rgb(path: str) -> np.ndarray:
    """Read an image as RGB uint8 HWC with its EXIF orientation applied and 16-bit images scaled
    to 8 bits (:func:`lite_detr.data.read_image`, the reader of training and evaluation); a
    :class:`~lite_detr.config.ConfigError` naming the file for an unreadable or damaged one."""
    try:
        return read_image(path, format="RGB")
    except Exception as e:  # PIL raises many types for a file that is not an image
        raise ConfigError(
            f"Cannot read image {path!r} ({type(e).__name__}: {e}): pass a readable image file."
        ) from e
