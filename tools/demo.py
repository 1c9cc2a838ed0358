#!/usr/bin/env python
"""
Run a trained model on images, a folder or a video; write visualised predictions and JSON.

    python tools/demo.py --config-file CONFIG --weights model_final.pth \\
        --input img1.jpg img2.jpg folder/ video.mp4 --output out/ --confidence-threshold 0.5

Images give ``out/<name>.png`` (detectron2 ``Visualizer``), videos ``out/<name>.mp4`` (needs
OpenCV); all detections (boxes XYXY in input pixels, score, class) go to ``out/results.json``.
Images are read with their EXIF orientation applied (16-bit images scaled to 8 bits); an
unreadable image or video is skipped with a warning and the other inputs' results are saved.
"""

import argparse
import json
import logging
import os
from typing import Dict, List

import lite_detr  # noqa: F401  (first: quiets fvcore's import warning, see lite_detr/__init__.py)

# isort: split
import numpy as np
import torch
from detectron2.utils.visualizer import Visualizer
from PIL import Image
from tqdm import tqdm

from lite_detr.config import ConfigError, check_device, load_config
from lite_detr.engine import Predictor, read_rgb
from lite_detr.engine.cli import run_tool
from lite_detr.precision import PRECISIONS
from lite_detr.utils import atomic_write, temporary_path
from lite_detr.utils.malloc import reuse_freed_memory

logger = logging.getLogger("lite_detr.demo")

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv")


def _filter(instances, threshold: float, path: str = ""):
    kept = instances[instances.scores >= threshold]
    if path and len(kept) == 0:
        best = f"{float(instances.scores.max()):.3f}" if len(instances) else "none (no boxes)"
        logger.warning(
            f"{path}: no detection scored >= {threshold} (best score: {best}); lower "
            "--confidence-threshold to see more boxes."
        )
    return kept


def _to_json(instances, class_names: List[str]) -> List[Dict]:
    out = []
    for box, score, cls in zip(
        instances.pred_boxes.tensor.tolist(),
        instances.scores.tolist(),
        instances.pred_classes.tolist(),
    ):
        name = class_names[cls] if cls < len(class_names) else str(cls)
        out.append(
            {
                "bbox_xyxy": [round(v, 2) for v in box],
                "score": round(score, 4),
                "category_id": cls,
                "category": name,
            }
        )
    return out


def _expand_inputs(inputs: List[str]) -> List[str]:
    files = []
    for path in inputs:
        if os.path.isdir(path):
            found = sorted(
                os.path.join(path, f)
                for f in os.listdir(path)
                if f.lower().endswith(IMAGE_EXTS + VIDEO_EXTS)
            )
            if not found:
                raise ConfigError(f"Folder {path!r} has no image or video files.")
            files.extend(found)
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise ConfigError(
                f"Input {path!r} does not exist: pass image files, folders or videos."
            )
    return files


def _run_video(predictor, path: str, out_dir: str, threshold: float, class_names) -> List[Dict]:
    try:
        import cv2
    except ImportError as e:
        raise ConfigError(
            f"Video input {path!r} needs OpenCV: pip install opencv-python-headless."
        ) from e
    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        raise ConfigError(f"Cannot open video {path!r}: pass a readable video file.")
    ok, first = cap.read()
    if not ok:
        cap.release()
        raise ConfigError(f"Cannot read a frame of video {path!r}: pass a readable video file.")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    out_path = os.path.join(out_dir, os.path.splitext(os.path.basename(path))[0] + ".mp4")
    tmp_path = temporary_path(out_path) + ".mp4"  # OpenCV picks the container by extension
    writer, frames = None, []
    for idx in tqdm(range(n) if n else iter(int, 1), desc=os.path.basename(path), total=n):
        ok, bgr = (True, first) if idx == 0 else cap.read()
        if not ok:
            break
        rgb = bgr[:, :, ::-1]
        inst = _filter(predictor(rgb), threshold)
        vis = Visualizer(rgb, predictor.metadata).draw_instance_predictions(inst).get_image()
        if writer is None:
            fourcc = cv2.VideoWriter_fourcc(*"mp4v")
            writer = cv2.VideoWriter(tmp_path, fourcc, fps, (vis.shape[1], vis.shape[0]))
        writer.write(np.ascontiguousarray(vis[:, :, ::-1]))
        frames.append({"frame": idx, "instances": _to_json(inst, class_names)})
    cap.release()
    if writer is not None:
        writer.release()
        os.replace(tmp_path, out_path)
    return [{"file_name": path, "output": out_path, "frames": frames}]


def run(
    cfg,
    weights: str,
    inputs: List[str],
    output: str,
    threshold: float = 0.5,
    precision: str = "fp32",
) -> List[Dict]:
    """Predict on every input; write PNG/MP4 visualisations and ``results.json`` into ``output``.
    ``precision`` "bf16": bfloat16 CPU inference (:class:`~lite_detr.engine.Predictor`)."""
    if os.path.exists(output) and not os.path.isdir(output):
        raise ConfigError(f"--output {output!r} is a file: pass a folder (it is created).")
    files = _expand_inputs(inputs)
    predictor = Predictor(cfg, weights, precision)
    class_names = predictor.metadata.get("thing_classes", [])
    os.makedirs(output, exist_ok=True)
    results, skipped = [], []
    for path in tqdm(files, desc="demo"):
        try:
            if path.lower().endswith(VIDEO_EXTS):
                results.extend(_run_video(predictor, path, output, threshold, class_names))
                continue
            rgb = read_rgb(path)
        except ConfigError as e:  # one bad file must not cost the results of the others
            logger.warning(f"Skipped: {e}")
            skipped.append(e)
            continue
        inst = _filter(predictor(rgb), threshold, path)
        vis = Visualizer(rgb, predictor.metadata).draw_instance_predictions(inst)
        out_path = os.path.join(output, os.path.splitext(os.path.basename(path))[0] + ".png")
        with atomic_write(out_path, "wb") as f:
            Image.fromarray(vis.get_image()).save(f, format="PNG")
        results.append(
            {"file_name": path, "output": out_path, "instances": _to_json(inst, class_names)}
        )
        logger.info(f"{path}: {len(inst)} detections >= {threshold} -> {out_path}")
    if skipped and not results:
        raise skipped[0]
    with atomic_write(os.path.join(output, "results.json")) as f:
        json.dump(results, f, indent=1)
    if skipped:
        logger.warning(f"{len(skipped)} unreadable input(s) skipped (see the warnings above).")
    return results


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--weights", default="", help="checkpoint (default: train.init_checkpoint)")
    parser.add_argument("--input", nargs="+", required=True, help="images, folders or videos")
    parser.add_argument("--output", required=True, help="folder for PNG/MP4 and results.json")
    parser.add_argument("--confidence-threshold", type=float, default=0.5)
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="bf16: bfloat16 inference on a CPU with bfloat16 instructions (else fp32)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides key=value")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    return run_tool("demo.py", lambda: _main(args))


def _main(args):
    reuse_freed_memory()  # large CPU tensors: reuse freed blocks (lite_detr/utils/malloc.py)
    cfg = load_config(args.config_file, args.opts)
    check_device(cfg.train.device)
    if cfg.train.device.startswith("cuda") and not torch.cuda.is_available():
        # training configs default to cuda; inference runs anywhere
        logger.warning("No CUDA GPU: running the demo on the CPU.")
        cfg.train.device = "cpu"
    from lite_detr.data import DatasetError, prepare_datasets

    try:  # class names (and model.num_classes: null) from the test dataset's json
        prepare_datasets(cfg, ("test",), check_images=False)
    except DatasetError as e:
        raise ConfigError(str(e)) from e
    return run(
        cfg,
        args.weights or cfg.train.init_checkpoint,
        args.input,
        args.output,
        args.confidence_threshold,
        args.precision,
    )


if __name__ == "__main__":
    main()
