"""
Reading an image file as the model sees it: the one reader of training, evaluation, the demo
and ``tools/visualize_data.py``.

detectron2's ``read_image`` has two gaps that give wrong pixels without an error: a PNG whose
compressed data is damaged decodes to a (mostly black) partial image, because ``np.asarray`` on a
PIL image swallows the decoder's error; and a 16-bit grayscale image is clipped to 8 bits, so it
reads as a uniform all-255 picture. Here the file is decoded completely first (a damaged one
raises ``OSError``), and 16-bit images are scaled to 8 bits as OpenCV's ``imread`` does.
"""

import numpy as np
from detectron2.data import detection_utils as utils

__all__ = ["read_image"]

# PIL modes of 16-bit single-channel images (PNG, TIFF): scaled to 8 bits by dropping the low byte
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def read_image(file_name: str, format: str = "RGB") -> np.ndarray:
    """
    Read an image file with its EXIF orientation applied (as detectron2's ``read_image``).

    Args:
        file_name (str): the image file.
        format (str): "RGB" or "BGR" (or any mode detectron2's ``convert_PIL_to_numpy`` takes).

    Returns:
        ndarray: (H, W, 3) uint8 for RGB/BGR.

    Raises:
        OSError: the file is missing, not an image, or its data is damaged or truncated.
        ValueError: a 32-bit integer or floating-point image, whose range is unknown.
    """
    from PIL import Image

    with open(file_name, "rb") as f:
        image = Image.open(f)
        image.load()  # decode now: a damaged data stream raises here, not later as black pixels
    # detectron2's EXIF handling (a work-around for a PIL bug), so that every reader here gives
    # the pixels that detectron2's data loading gives
    image = utils._apply_exif_orientation(image)
    if image.mode in _SIXTEEN_BIT:
        image = Image.fromarray((np.asarray(image) >> 8).astype(np.uint8), mode="L")
    elif image.mode in ("I", "F"):
        kind = "integer" if image.mode == "I" else "floating-point"
        raise ValueError(
            f"it is a 32-bit {kind} image (PIL mode {image.mode}) whose value range is unknown: "
            "save it as an 8-bit (or 16-bit) RGB or grayscale image"
        )
    return utils.convert_PIL_to_numpy(image, format)
