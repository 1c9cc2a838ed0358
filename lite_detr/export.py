"""Deployment: ONNX export (any input size, standard ONNX ops), torch.export, torch.compile.

:class:`InferenceDetector` is the inference path of a DINO-family detector as a function of one
image tensor; :func:`export_program` captures it with ``torch.export`` with a dynamic height and
width (the deformable attention ops stay ``lite_detr::`` nodes), :func:`export_onnx` turns that
program into an ONNX file whose ops are standard ones (see :mod:`lite_detr.ops.onnx_translation`)
and checks it with ONNX Runtime against PyTorch.
"""

import logging
import os
import tempfile
from typing import Dict, List, Sequence, Tuple

import torch
from detectron2.structures import ImageList
from torch import Tensor, nn

from .modeling.meta_arch import DINO

__all__ = [
    "BOX_TOLERANCE",
    "SCORE_TOLERANCE",
    "ExportError",
    "InferenceDetector",
    "check_input_size",
    "compare_detections",
    "export_onnx",
    "export_program",
    "min_input_side",
    "run_onnx",
]

logger = logging.getLogger(__name__)

# ONNX Runtime vs PyTorch (float32 on CPU): scores are sigmoids, boxes in input pixels
SCORE_TOLERANCE = 1e-4
BOX_TOLERANCE = 0.05
INPUT_NAMES = ["image"]
OUTPUT_NAMES = ["boxes", "scores", "labels"]


class ExportError(RuntimeError):
    """A model, input size or file that cannot be exported; the message says what to change."""


class InferenceDetector(nn.Module):
    """
    One image in, detections out: ``model([{"image": image, "height": H, "width": W}])`` as a
    function of tensors, which ``torch.export`` / ``torch.compile`` / the ONNX exporter trace.

    ``forward(image)``: image (3, H, W) float32, 0-255, in the model's input format (RGB for
    the configs of this repository), H and W multiples of the model's size divisibility (no
    padding is added). Returns ``boxes`` (K, 4) XYXY in input pixels, ``scores`` (K,) and
    ``labels`` (K,) int64: the model's top-k detections (:meth:`DINO.inference`: K =
    ``select_box_nums_for_evaluation``, no clipping, as the released DINO).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        if not isinstance(model, DINO):
            raise ExportError(
                f"cannot export {type(model).__name__}: only the DINO-family detectors of "
                "lite_detr (DINO, LiteDINO, DeformableDETR, HDETR and their Lite variants) have "
                "an exportable inference path; use one of their configs"
            )
        self.model = model

    def forward(self, image: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        m = self.model
        h, w = image.shape[-2:]
        x = (image.to(m.pixel_mean.dtype) - m.pixel_mean) / m.pixel_std
        images = ImageList(x[None], [(h, w)])
        enc = m.encode(*m.extract_features(images), padded=False)  # one unpadded image
        content, ref_unsig, _ = m.select_queries(enc)
        logits, boxes = m.decode(enc, content, ref_unsig)
        scores, labels, boxes = m.select_detections(logits[-1], boxes[-1])
        scale = torch.tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device)
        return boxes[0] * scale, scores[0], labels[0]


def _divisibility(model: nn.Module) -> int:
    return max(int(getattr(model, "size_divisibility", 0) or 0), 1)


def check_input_size(model: nn.Module, height: int, width: int) -> None:
    """Raise :class:`ExportError` unless ``height`` and ``width`` are positive multiples of the
    model's size divisibility."""
    d = _divisibility(model)
    if height <= 0 or width <= 0 or height % d or width % d:
        raise ExportError(
            f"input size {height}x{width} is not a multiple of the model's size divisibility "
            f"{d}; use e.g. {max(d, -(-height // d) * d)}x{max(d, -(-width // d) * d)} "
            "(resize or pad the image to such a size before running the exported model)"
        )


@torch.no_grad()
def min_input_side(model: nn.Module, limit: int = 4096) -> int:
    """
    The smallest side (a multiple of the size divisibility, or of 8 without one) at which a
    square image gives at least 2 x 2 pixels on every feature level and at least ``num_queries``
    encoder tokens: the lower bound on H and W of the exported graph (sizes 0 and 1 are special
    cases to ``torch.export``; fewer tokens than queries cannot be selected).
    """
    d = _divisibility(model)
    step = d if d > 1 else 8
    device = model.pixel_mean.device
    for side in range(step, limit + 1, step):
        feats = model.neck(model.backbone(torch.zeros(1, 3, side, side, device=device)))
        if min(min(f.shape[-2:]) for f in feats) < 2:
            continue
        if sum(f.shape[-2] * f.shape[-1] for f in feats) >= model.num_queries:
            return side
    raise ExportError(f"num_queries={model.num_queries} needs images larger than {limit} px")


def _dynamic_shapes(model: nn.Module) -> Dict:
    d = _divisibility(model)
    low = min_input_side(model) // d
    if d == 1:
        return {
            "image": {1: torch.export.Dim("height", min=low), 2: torch.export.Dim("width", min=low)}
        }
    blocks_h = torch.export.Dim("height_blocks", min=low)
    blocks_w = torch.export.Dim("width_blocks", min=low)
    return {"image": {1: d * blocks_h, 2: d * blocks_w}}


def _example(model: nn.Module, height: int, width: int, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(3, height, width, generator=g) * 255).to(model.pixel_mean.device)


def export_program(model: nn.Module, height: int, width: int) -> torch.export.ExportedProgram:
    """``torch.export.export`` of :class:`InferenceDetector` (model in eval mode, on its device)
    traced at ``height`` x ``width`` with H and W dynamic (multiples of the size divisibility,
    from :func:`min_input_side` up). The deformable attention ops stay ``lite_detr::`` nodes."""
    wrapper = InferenceDetector(model).eval()
    check_input_size(model, height, width)
    low = min_input_side(model)
    if min(height, width) < low:
        raise ExportError(
            f"input size {height}x{width} is too small: {type(model).__name__} selects "
            f"{model.num_queries} queries and needs images of at least {low}x{low}"
        )
    try:
        with torch.no_grad():
            return torch.export.export(
                wrapper, (_example(model, height, width),), dynamic_shapes=_dynamic_shapes(model)
            )
    except Exception as e:  # a model whose inference path torch.export cannot capture
        raise ExportError(
            f"torch.export could not capture {type(model).__name__}'s inference path with a "
            f"dynamic input size: {type(e).__name__}: {_first_line(e)}"
        ) from e


def _first_line(e: Exception) -> str:
    lines = [line for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else ""


def compare_detections(
    expected: Sequence[Tensor], actual: Sequence, size: Tuple[int, int], name: str = "ONNX Runtime"
) -> Dict[str, float]:
    """
    Check that two runs gave the same detections: each detection of ``expected`` (boxes, scores,
    labels) pairs one-to-one with a detection of ``actual`` of the same label, score within
    :data:`SCORE_TOLERANCE` and box within :data:`BOX_TOLERANCE` px. Detections whose scores tie
    within the tolerance may come in either order; at the top-k cut-off one may be kept by one
    run and not by the other when its score is within the tolerance of the lowest kept score.

    Returns:
        "detections" (of ``expected``), "matched", "max_score_diff", "max_box_diff_px" (over the
        matched pairs). Raises :class:`ExportError` naming the first unmatched detection.
    """
    boxes, scores, labels = (torch.as_tensor(t).cpu() for t in expected)
    o_boxes, o_scores, o_labels = (torch.as_tensor(t).cpu() for t in actual)
    o_labels = o_labels.to(labels.dtype)
    where = f"at {size[0]}x{size[1]}"
    if len(o_scores) != len(scores):
        raise ExportError(
            f"{name} detections differ from PyTorch's {where}: {len(o_scores)} "
            f"detections, PyTorch {len(scores)}"
        )
    score_diff = (scores[:, None] - o_scores[None, :]).abs()  # (K, K')
    box_diff = (boxes[:, None] - o_boxes[None, :]).abs().amax(-1) if len(boxes) else score_diff
    ok = (labels[:, None] == o_labels[None, :]) & (score_diff <= SCORE_TOLERANCE)
    ok &= box_diff <= BOX_TOLERANCE
    free = torch.ones(len(o_scores), dtype=torch.bool)
    matched, worst_score, worst_box = 0, 0.0, 0.0
    unmatched = []
    for i in range(len(scores)):
        candidates = (ok[i] & free).nonzero().flatten()
        if len(candidates) == 0:
            unmatched.append(i)
            continue
        j = candidates[score_diff[i, candidates].argmin()]
        free[j] = False
        matched += 1
        worst_score = max(worst_score, float(score_diff[i, j]))
        worst_box = max(worst_box, float(box_diff[i, j]))
    # a detection that one run kept and the other did not must score at the other's cut-off
    cut = float(o_scores.min()) + SCORE_TOLERANCE if len(o_scores) else float("-inf")
    o_cut = float(scores.min()) + SCORE_TOLERANCE if len(scores) else float("-inf")
    for i in unmatched:
        if float(scores[i]) > cut:
            raise ExportError(
                f"{name} detections differ from PyTorch's {where}: PyTorch's detection "
                f"#{i} (label {int(labels[i])}, score {float(scores[i]):.6f}, box "
                f"{[round(v, 2) for v in boxes[i].tolist()]}) has no counterpart within "
                f"{SCORE_TOLERANCE} in score and {BOX_TOLERANCE} px"
            )
    for j in free.nonzero().flatten().tolist():
        if float(o_scores[j]) > o_cut:
            raise ExportError(
                f"{name} detections differ from PyTorch's {where}: its detection #{j} "
                f"(label {int(o_labels[j])}, score {float(o_scores[j]):.6f}) is not among "
                "PyTorch's"
            )
    return {
        "detections": len(scores),
        "matched": matched,
        "max_score_diff": worst_score,
        "max_box_diff_px": worst_box,
    }


def run_onnx(session, image: Tensor) -> List:
    """Run an ONNX Runtime session of an exported detector on one (3, H, W) image."""
    return session.run(OUTPUT_NAMES, {"image": image.detach().cpu().numpy()})


def _check_file(
    path: str, wrapper: InferenceDetector, sizes: Sequence[Tuple[int, int]], threads: int
) -> List[Dict]:
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    report = []
    for i, (h, w) in enumerate(sizes):
        image = _example(wrapper.model, h, w, seed=i + 1)
        with torch.no_grad():
            expected = wrapper(image)
        diff = compare_detections(expected, run_onnx(session, image), (h, w))
        report.append({"size": (h, w), **diff})
    return report


def export_onnx(
    model: nn.Module,
    output: str,
    height: int,
    width: int,
    check_sizes: Sequence[Tuple[int, int]] = (),
    threads: int = 2,
) -> List[Dict]:
    """
    Export ``model`` (eval mode, CPU) to an ONNX file with input ``image`` (3, H, W), H and W
    dynamic, and outputs ``boxes``, ``scores``, ``labels`` (see :class:`InferenceDetector`).

    The file is written to a temporary name next to ``output``, checked with ONNX Runtime against
    PyTorch at ``height`` x ``width`` and at each of ``check_sizes``, and renamed to ``output``
    only when every check passes; on any error no file is left behind.

    Returns:
        one dict per checked size: "size", "detections", "max_score_diff", "max_box_diff_px".
    """
    from .ops.onnx_translation import ONNX_OPSET, onnx_translation_table

    sizes = [(height, width)] + [tuple(s) for s in check_sizes]
    for h, w in sizes:
        check_input_size(model, h, w)
    program = export_program(model, height, width)
    out_dir = os.path.dirname(os.path.abspath(output))
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".onnx", dir=out_dir)
    os.close(fd)
    try:
        try:
            onnx_program = torch.onnx.export(
                program,
                input_names=INPUT_NAMES,
                output_names=OUTPUT_NAMES,
                opset_version=ONNX_OPSET,
                custom_translation_table=onnx_translation_table(),
                dynamo=True,
                # onnxscript's graph optimizer leaves this graph unsorted (onnx.checker rejects
                # it); ONNX Runtime optimizes the graph itself when it loads it
                optimize=False,
                verbose=False,
            )
        except Exception as e:
            raise ExportError(
                f"the ONNX exporter could not convert {type(model).__name__}: "
                f"{type(e).__name__}: {_first_line(e)}"
            ) from e
        onnx_program.save(tmp, external_data=False)
        report = _check_file(tmp, InferenceDetector(model).eval(), sizes, threads)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates it private
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return report
