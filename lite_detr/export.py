"""Deployment: ONNX export (any input size, standard ONNX ops), torch.export, torch.compile.

:class:`InferenceDetector` is the inference path of a DINO-family detector as a function of one
image tensor; :func:`export_program` captures it with ``torch.export`` with a dynamic height and
width (the deformable attention ops stay ``lite_detr::`` nodes), :func:`export_onnx` turns that
program into an ONNX file whose ops are standard ones (see :mod:`lite_detr.ops.onnx_translation`)
and checks it with ONNX Runtime against PyTorch; :class:`OnnxDetector` runs such a file, checking
the input size the file records.
"""

import contextlib
import logging
import os
import tempfile
from functools import partial
from typing import Callable, Dict, List, Sequence, Tuple

import torch
from detectron2.structures import ImageList
from torch import Tensor, nn

from .modeling.meta_arch import TwoStageDeformableDETR

__all__ = [
    "BOX_TOLERANCE",
    "PROPOSAL_TOLERANCE",
    "SCORE_TOLERANCE",
    "ExportError",
    "InferenceDetector",
    "OnnxDetector",
    "check_input_size",
    "compare_detections",
    "compare_with_pytorch",
    "describe_comparison",
    "export_onnx",
    "export_program",
    "min_input_side",
    "onnx_session",
    "optimized_onnx_path",
    "read_selection",
    "run_onnx",
    "selection_changes",
    "selection_session",
    "write_optimized_onnx",
]

logger = logging.getLogger(__name__)

# ONNX Runtime vs PyTorch (float32 on CPU): scores are sigmoids, boxes in input pixels
SCORE_TOLERANCE = 1e-4
BOX_TOLERANCE = 0.05
# encoder proposal scores (the logits that the top-num_queries query selection ranks)
PROPOSAL_TOLERANCE = 1e-4
INPUT_NAMES = ["image"]
OUTPUT_NAMES = ["boxes", "scores", "labels"]
# metadata_props of an exported file: the input sizes the graph takes (OnnxDetector checks them)
MIN_SIDE_KEY = "lite_detr.min_input_side"
DIVISIBILITY_KEY = "lite_detr.size_divisibility"


class ExportError(RuntimeError):
    """A model, input size or file that cannot be exported; the message says what to change."""


class InferenceDetector(nn.Module):
    """
    One image in, detections out: ``model([{"image": image, "height": H, "width": W}])`` as a
    function of tensors, which ``torch.export`` / ``torch.compile`` / the ONNX exporter trace.

    ``forward(image)``: image (3, H, W) float32, 0-255, in the model's input format (RGB for
    the configs of this repository), H and W multiples of the model's size divisibility (no
    padding is added). Returns ``boxes`` (K, 4) XYXY in input pixels, ``scores`` (K,) and
    ``labels`` (K,) int64: the model's top-k detections, from the model's own inference path
    (:meth:`TwoStageDeformableDETR.detect`: K = ``select_box_nums_for_evaluation``, no clipping,
    as the released DINO; fewer when a model with ranking-only class rows drops theirs). With
    ``return_selection`` also the query selection: the proposal scores (S,) and the selected
    tokens (Q,) (for :func:`compare_with_pytorch`).
    """

    def __init__(self, model: nn.Module, return_selection: bool = False):
        super().__init__()
        if not isinstance(model, TwoStageDeformableDETR):
            raise ExportError(
                f"cannot export {type(model).__name__}: only the DINO-family detectors of "
                "lite_detr (DINO, DeformableDETR, HDETR, with either encoder) have "
                "an exportable inference path; use one of their configs"
            )
        self.model = model
        self.return_selection = return_selection

    def forward(self, image: Tensor) -> Tuple[Tensor, ...]:
        m = self.model
        if not self.return_selection:
            return m.detect(_image_list(m, image))[0]
        # as TwoStageDeformableDETR.detect, keeping the proposal scores and the selected tokens
        enc = _encode(m, image)
        logits, coords_unsig = m.proposals(enc)
        selected = m.top_tokens(logits, m.num_queries)
        detections = _detect(m, enc, logits, coords_unsig, selected, image.shape[-2:])
        return (*detections, m.proposal_scores(logits)[0], selected[0])


def _image_list(model: TwoStageDeformableDETR, image: Tensor) -> ImageList:
    """One image (3, H, W), normalised, as a batch of its own size (no padding)."""
    return ImageList(model.normalize(image)[None], [tuple(image.shape[-2:])])


def _encode(model: TwoStageDeformableDETR, image: Tensor) -> Dict:
    # one unpadded image: no key padding mask
    return model.encode(*model.extract_features(_image_list(model, image)), padded=False)


def _detect(
    model: TwoStageDeformableDETR,
    enc: Dict,
    logits: Tensor,
    coords_unsig: Tensor,
    selected: Tensor,
    size: Tuple[int, int],
) -> Tuple[Tensor, Tensor, Tensor]:
    """One image's detections (:meth:`TwoStageDeformableDETR.postprocess`: boxes in pixels,
    scores, labels) decoded from the proposals (``logits``, ``coords_unsig`` of
    :meth:`~TwoStageDeformableDETR.proposals`) of the tokens ``selected`` (1, Q)."""
    ref_unsig, _ = model.gather_proposals(logits, coords_unsig, selected)
    content = model.content_queries(ref_unsig, enc["memory"])
    logits, boxes = model.decode(enc, content, ref_unsig)
    return model.postprocess(logits[-1], boxes[-1], [size])[0]


def _divisibility(model: nn.Module) -> int:
    return max(int(getattr(model, "size_divisibility", 0) or 0), 1)


def check_input_size(model: nn.Module, height: int, width: int) -> None:
    """Raise :class:`ExportError` unless ``height`` and ``width`` are at least
    :func:`min_input_side` and multiples of the model's size divisibility."""
    d = _divisibility(model)
    low = min_input_side(model)
    if min(height, width) < low:
        raise ExportError(
            f"input size {height}x{width} is too small: {type(model).__name__} needs at least "
            f"{low}x{low} (every feature level needs 2x2 pixels and the encoder at least "
            f"num_queries={model.num_queries} tokens); use e.g. "
            f"{max(height, low)}x{max(width, low)}" + (f" (multiples of {d})" if d > 1 else "")
        )
    if height % d or width % d:
        raise ExportError(
            f"input size {height}x{width} is not a multiple of the model's size divisibility "
            f"{d}; use e.g. {-(-height // d) * d}x{-(-width // d) * d} "
            "(resize or pad the image to such a size before running the exported model)"
        )


@torch.no_grad()
def min_input_side(model: nn.Module, limit: int = 4096) -> int:
    """
    The smallest side (a multiple of the size divisibility, or of 8 without one) at which a
    square image gives at least 2 x 2 pixels on every feature level and at least ``num_queries``
    encoder tokens: the lower bound on H and W of the exported graph (sizes 0 and 1 are special
    cases to ``torch.export``; fewer tokens than queries cannot be selected), and at least the
    backbone's ``min_export_side`` where it has one (:class:`~lite_detr.modeling.SwinTransformer`:
    two windows per side at every stage).
    """
    d = _divisibility(model)
    step = d if d > 1 else 8
    device = model.pixel_mean.device
    first = -(-getattr(model.backbone, "min_export_side", step) // step) * step
    for side in range(first, limit + 1, step):
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
    try:
        # size-oblivious reasoning: a reshape whose symbolic sizes might be 1 (the window counts
        # of a Swin backbone) traces its general case instead of guarding on the traced size
        with torch.no_grad(), torch.fx.experimental._config.patch(backed_size_oblivious=True):
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


def _match(expected: Sequence[Tensor], actual: Sequence, where: str, name: str) -> Dict:
    """Pair the detections of two runs (see :func:`compare_detections`); returns the statistics
    and "error": the message naming the first detection that breaks the rule, or None."""
    boxes, scores, labels = (torch.as_tensor(t).cpu() for t in expected)
    o_boxes, o_scores, o_labels = (torch.as_tensor(t).cpu() for t in actual)
    o_labels = o_labels.to(labels.dtype)
    result = {"detections": len(scores), "matched": 0, "max_score_diff": 0.0}
    result.update(max_box_diff_px=0.0, error=None)
    prefix = f"{name} detections differ from PyTorch's {where}: "
    if len(o_scores) != len(scores):
        result["error"] = prefix + f"{len(o_scores)} detections, PyTorch {len(scores)}"
        return result
    score_diff = (scores[:, None] - o_scores[None, :]).abs()  # (K, K')
    box_diff = (boxes[:, None] - o_boxes[None, :]).abs().amax(-1) if len(boxes) else score_diff
    ok = (labels[:, None] == o_labels[None, :]) & (score_diff <= SCORE_TOLERANCE)
    ok &= box_diff <= BOX_TOLERANCE
    free = torch.ones(len(o_scores), dtype=torch.bool)
    unmatched = []
    for i in range(len(scores)):
        candidates = (ok[i] & free).nonzero().flatten()
        if len(candidates) == 0:
            unmatched.append(i)
            continue
        j = candidates[score_diff[i, candidates].argmin()]
        free[j] = False
        result["matched"] += 1
        result["max_score_diff"] = max(result["max_score_diff"], float(score_diff[i, j]))
        result["max_box_diff_px"] = max(result["max_box_diff_px"], float(box_diff[i, j]))
    # a detection that one run kept and the other did not must score at the other's cut-off
    cut = float(o_scores.min()) + SCORE_TOLERANCE if len(o_scores) else float("-inf")
    o_cut = float(scores.min()) + SCORE_TOLERANCE if len(scores) else float("-inf")
    for i in unmatched:
        if float(scores[i]) > cut:
            result["error"] = prefix + (
                f"PyTorch's detection #{i} (label {int(labels[i])}, score "
                f"{float(scores[i]):.6f}, box {[round(v, 2) for v in boxes[i].tolist()]}) has no "
                f"counterpart within {SCORE_TOLERANCE} in score and {BOX_TOLERANCE} px"
            )
            return result
    for j in free.nonzero().flatten().tolist():
        if float(o_scores[j]) > o_cut:
            result["error"] = prefix + (
                f"its detection #{j} (label {int(o_labels[j])}, score {float(o_scores[j]):.6f}) "
                "is not among PyTorch's"
            )
            return result
    return result


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
    result = _match(expected, actual, f"at {size[0]}x{size[1]}", name)
    error = result.pop("error")
    if error:
        raise ExportError(error)
    return result


def selection_changes(
    scores: Tensor, selected: Tensor, other_scores: Tensor, other_selected: Tensor
) -> Dict:
    """
    How another runtime's top-``Q`` query selection differs from PyTorch's on one image.

    Args:
        scores, other_scores: (S,) PyTorch's and the other runtime's proposal scores (best
            class logit of each encoder token); selected, other_selected: (Q,) their top-Q
            tokens by descending score (query q takes token ``selected[q]``).

    Returns:
        "score_diff": max |other_scores - scores|; "swapped": tokens the other runtime selects
        and PyTorch does not; "moved": queries whose token differs; "max_gap": the largest
        PyTorch score difference of two tokens that the runtimes rank in opposite orders (the
        ties that its rounding flipped; at most 2 x score_diff when both selections are top-Q).
    """
    scores, other_scores = (torch.as_tensor(t).double().cpu() for t in (scores, other_scores))
    selected, other_selected = (torch.as_tensor(t).long().cpu() for t in (selected, other_selected))
    chosen = torch.zeros(len(scores), dtype=torch.bool)
    chosen[selected] = True
    swapped = int((~chosen[other_selected]).sum())
    moved = int((selected != other_selected).sum())
    # ranked by the other runtime: its Q tokens in order, then those it left out; an inversion is a
    # pair ranked one way there and the other way by PyTorch's scores
    left_out = torch.ones(len(scores), dtype=torch.bool)
    left_out[other_selected] = False
    ranked = scores[other_selected]
    best_left_out = scores[left_out].max() if bool(left_out.any()) else ranked.min()
    later_max = torch.cat([ranked, best_left_out[None]]).flip(0).cummax(0)[0].flip(0)[1:]
    max_gap = float((later_max - ranked).clamp(min=0).max()) if len(ranked) else 0.0
    return {
        "score_diff": float((other_scores - scores).abs().max()),
        "swapped": swapped,
        "moved": moved,
        "max_gap": max_gap,
    }


@torch.no_grad()
def compare_with_pytorch(
    model: nn.Module,
    image: Tensor,
    actual: Sequence,
    name: str = "ONNX Runtime",
    selection: Sequence | Callable[[], Sequence] | None = None,
    tolerance: float = PROPOSAL_TOLERANCE,
) -> Dict:
    """
    Compare another runtime's detections on ``image`` (3, H, W) with the PyTorch model's,
    near-ties of the query selection included.

    First strictly (:func:`compare_detections`). When that fails, the difference may come from
    the top-``num_queries`` selection of encoder proposals: proposals of near-equal score (random
    weights give neighbouring tokens such scores) may be ranked either way by two runtimes whose
    rounding differs by far less than the stated tolerances, and a query then decodes another
    proposal. ``selection`` decides it: the other runtime's own proposal scores (S,) and
    selected tokens (Q,) of this run, or a function returning them (called only then). The
    runtime's proposal scores must equal PyTorch's within ``tolerance`` (so its
    selection differs from PyTorch's only among proposals whose PyTorch scores lie within twice
    the measured difference of each other, :func:`selection_changes`), and its detections must
    equal, strictly, those of PyTorch's decoder given the runtime's selection. Nothing else is
    excused.

    Returns:
        the statistics of :func:`compare_detections` against PyTorch's detections ("matched" may
        be below "detections" when the selection differs) and "selection": None, or the
        :func:`selection_changes` with the statistics against PyTorch's detections decoded from
        the runtime's selection ("matched", "max_score_diff", "max_box_diff_px"). Raises
        :class:`ExportError` otherwise.
    """
    m = model
    size = tuple(image.shape[-2:])
    where = f"at {size[0]}x{size[1]}"
    enc = _encode(m, image)
    logits, coords_unsig = m.proposals(enc)
    scores = m.proposal_scores(logits)
    selected = m.top_tokens(logits, m.num_queries)

    def detections(sel: Tensor) -> Tuple:
        return _detect(m, enc, logits, coords_unsig, sel, size)

    result = _match(detections(selected), actual, where, name)
    error = result.pop("error")
    result["selection"] = None
    if error is None:
        return result
    try:
        selection = selection() if callable(selection) else selection
    except ExportError as e:
        raise ExportError(f"{error} ({e})") from e
    if selection is None:
        raise ExportError(error)
    other_scores, other_selected = (torch.as_tensor(t).reshape(-1) for t in selection)
    changes = selection_changes(scores[0], selected[0], other_scores, other_selected)
    if changes["score_diff"] > tolerance:
        raise ExportError(
            f"{error}; its encoder proposal scores differ from PyTorch's by up to "
            f"{changes['score_diff']:.2g} (tolerance {tolerance:g})"
        )
    if changes["moved"] == 0:
        raise ExportError(f"{error} (with the same top-{m.num_queries} query selection)")
    other = other_selected.to(selected.device)[None]
    flipped = _match(detections(other), actual, where, name)
    if flipped["error"] is not None:
        raise ExportError(
            f"{flipped['error']}, even decoding {name}'s top-{m.num_queries} query selection "
            f"({changes['swapped']} proposals swapped at the cut-off, {changes['moved']} queries "
            "changed)"
        )
    flipped.pop("error")
    result["selection"] = {**changes, "tolerance": tolerance, **flipped}
    return result


def describe_comparison(result: Dict, num_queries: int, name: str = "ONNX Runtime") -> str:
    """One line about a :func:`compare_with_pytorch` result: ``300/300 equal (...)`` or e.g.
    ``299/300 equal, 1 differs: a proposal tie in the top-900 query selection (...)``."""
    n = result["detections"]
    sel = result["selection"]
    stats = sel if sel is not None else result
    diffs = (
        f"max score diff {stats['max_score_diff']:.2g} (tolerance {SCORE_TOLERANCE:g}), max box "
        f"diff {stats['max_box_diff_px']:.2g} px (tolerance {BOX_TOLERANCE:g})"
    )
    if sel is None:
        return f"{result['matched']}/{n} equal ({diffs})"
    differ = n - result["matched"]
    return (
        f"{result['matched']}/{n} equal, {differ} differ{'s' if differ == 1 else ''}: a proposal "
        f"tie in the top-{num_queries} query selection ({sel['moved']} queries take other "
        f"proposals, {sel['swapped']} swapped in at the cut-off; PyTorch score gap "
        f"{sel['max_gap']:.2g}, {name}'s proposal scores within {sel['score_diff']:.2g} of "
        f"PyTorch's, tolerance {sel['tolerance']:g}); {sel['matched']}/{n} equal PyTorch's "
        f"decoding of {name}'s selection ({diffs})"
    )


def run_onnx(session, image: Tensor) -> List:
    """Run an ONNX Runtime session of an exported detector on one (3, H, W) image."""
    return session.run(OUTPUT_NAMES, {"image": image.detach().cpu().numpy()})


def selection_session(path: str, num_queries: int, options=None):
    """
    An ONNX Runtime session of an exported detector whose graph also outputs its query selection:
    the proposal scores (1, S) that its ``TopK`` of K = ``num_queries`` ranks and the selected
    tokens (1, Q), after ``boxes``, ``scores``, ``labels``. The file is not changed. None when
    the graph has no such ``TopK``.
    """
    import numpy as np
    import onnx
    import onnxruntime as ort

    proto = onnx.load(path)
    graph = proto.graph
    constants = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    initializers = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type != "TopK":
            continue
        k = node.input[1]
        if k in initializers:
            value = onnx.numpy_helper.to_array(initializers[k])
        elif k in constants:
            value = onnx.helper.get_attribute_value(constants[k].attribute[0])
            if isinstance(value, onnx.TensorProto):
                value = onnx.numpy_helper.to_array(value)
        else:
            continue
        if np.asarray(value).reshape(-1).tolist() == [
            num_queries
        ]:  # the first such TopK: the encoder's, before the decoder
            graph.output.extend(
                [
                    onnx.helper.make_tensor_value_info(node.input[0], onnx.TensorProto.FLOAT, None),
                    onnx.helper.make_tensor_value_info(
                        node.output[1], onnx.TensorProto.INT64, None
                    ),
                ]
            )
            return ort.InferenceSession(
                proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
            )
    return None


def read_selection(session, image: Tensor, detections: Sequence) -> Tuple:
    """The query selection (proposal scores, selected tokens) of a :func:`selection_session` on
    ``image``, checked to come with the same ``detections`` as the plain file's run."""
    import numpy as np

    if session is None:
        raise ExportError("the ONNX graph has no TopK of the query selection to read")
    *again, scores, selected = session.run(None, {"image": image.detach().cpu().numpy()})
    if not all(np.array_equal(a, np.asarray(b)) for a, b in zip(again, detections)):
        raise ExportError("ONNX Runtime's detections change when its selection is read out")
    return scores, selected


def _check_file(
    path: str, model: nn.Module, sizes: Sequence[Tuple[int, int]], threads: int
) -> List[Dict]:
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    instrumented = []

    def runtime_selection(image: Tensor, detections: Sequence) -> Sequence:
        # only when the strict comparison failed: the same graph, its selection read out
        if not instrumented:
            instrumented.append(selection_session(path, model.num_queries, opts))
        return read_selection(instrumented[0], image, detections)

    report = []
    for i, (h, w) in enumerate(sizes):
        image = _example(model, h, w, seed=i + 1)
        out = run_onnx(session, image)
        diff = compare_with_pytorch(
            model, image, out, selection=partial(runtime_selection, image, out)
        )
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
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with _onnx_written_to(output) as tmp:
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
        # the sizes the graph takes, for OnnxDetector (ONNX has no way to state a minimum)
        onnx_program.model.metadata_props.update(
            {MIN_SIDE_KEY: str(min_input_side(model)), DIVISIBILITY_KEY: str(_divisibility(model))}
        )
        onnx_program.save(tmp, external_data=False)
        report = _check_file(tmp, InferenceDetector(model).model, sizes, threads)
    return report


@contextlib.contextmanager
def _onnx_written_to(output: str):
    """A temporary file next to ``output`` to write an ONNX file into: renamed to ``output`` when
    the ``with`` block completes, removed when it raises (``output`` is then left as it was)."""
    fd, tmp = tempfile.mkstemp(
        prefix=".tmp-", suffix=".onnx", dir=os.path.dirname(os.path.abspath(output))
    )
    os.close(fd)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates it private
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def onnx_session(
    path: str,
    threads: int | None = None,
    level: str = "all",
    optimized_model_filepath: str | None = None,
    profile_prefix: str | None = None,
):
    """
    An ONNX Runtime CPU session of ``path`` with ``threads`` intra-op threads (None: ONNX
    Runtime's default, one per core) and one inter-op thread, graph optimisation ``level``
    ("basic": constant folding and redundant nodes; "extended": also ONNX Runtime's fused
    operators; "all": also CPU-specific layouts), optionally saving the optimised graph to
    ``optimized_model_filepath`` and profiling every run into a JSON file whose name starts with
    ``profile_prefix`` (``session.end_profiling()`` returns it).
    """
    import onnxruntime as ort

    levels = {
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    opts = ort.SessionOptions()
    opts.graph_optimization_level = levels[level]
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if optimized_model_filepath:
        opts.optimized_model_filepath = optimized_model_filepath
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def optimized_onnx_path(path: str) -> str:
    """Where :func:`write_optimized_onnx` writes the optimised graph of ``path``: next to it,
    ``model.onnx`` -> ``model.optimized.onnx``."""
    return os.path.splitext(path)[0] + ".optimized.onnx"


def write_optimized_onnx(path: str, output: str | None = None) -> str:
    """
    Write ONNX Runtime's optimised graph of the exported file ``path`` (constants folded, shape
    arithmetic of the fixed sizes computed once, ONNX Runtime's fused operators: level
    "extended", which any CPU runs; the CPU-specific layouts of level "all" are applied when a
    session loads it) to ``output`` (default :func:`optimized_onnx_path`), through a temporary
    file renamed when complete. Loading it skips the optimisation; detections are the same.
    Returns ``output``.
    """
    output = output or optimized_onnx_path(path)
    with _onnx_written_to(output) as tmp:
        onnx_session(path, level="extended", optimized_model_filepath=tmp)
    return output


class OnnxDetector:
    """
    Run an ONNX file of :func:`export_onnx` with ONNX Runtime, checking the input size first.

    The graph takes any H and W from the model's minimum up (every feature level needs 2x2
    pixels, the encoder at least ``num_queries`` tokens for its ``TopK``), multiples of its size
    divisibility; the file records both (``metadata_props``). A smaller image raises
    :class:`ExportError` with one line that says the minimum, instead of ONNX Runtime's
    "TopK ... k argument [900] should not be greater than ...".

    Example::

        detector = OnnxDetector("lite_dino_r50.onnx")
        boxes, scores, labels = detector(rgb_hwc.transpose(2, 0, 1).astype(np.float32))

    Args:
        path (str): the ONNX file.
        providers: ONNX Runtime execution providers.
    """

    def __init__(self, path: str, providers: Sequence[str] = ("CPUExecutionProvider",)):
        import onnxruntime as ort

        self.path = path
        self.session = ort.InferenceSession(path, providers=list(providers))
        meta = self.session.get_modelmeta().custom_metadata_map
        # files exported before the sizes were recorded: ONNX Runtime's error is translated
        self.min_side = int(meta[MIN_SIDE_KEY]) if MIN_SIDE_KEY in meta else None
        self.size_divisibility = int(meta.get(DIVISIBILITY_KEY, 1))

    def check_size(self, height: int, width: int) -> None:
        """Raise :class:`ExportError` for a size the graph does not take."""
        low, d = self.min_side, self.size_divisibility
        if low is not None and min(height, width) < low:
            raise ExportError(
                f"image {height}x{width} is smaller than the minimum {low}x{low} of {self.path}: "
                f"resize it so that both sides are >= {low} (e.g. as the config's test mapper "
                "does) before detection"
            )
        if height % d or width % d:
            raise ExportError(
                f"image {height}x{width} is not a multiple of the size divisibility {d} of "
                f"{self.path}: pad or resize it to {-(-height // d) * d}x{-(-width // d) * d}"
            )

    def __call__(self, image) -> List:
        """
        Args:
            image: (3, H, W) float32 array (or tensor), 0-255, in the model's input format.

        Returns:
            [boxes (K, 4) XYXY pixels, scores (K,), labels (K,)] as numpy arrays.
        """
        image = image.detach().cpu().numpy() if isinstance(image, Tensor) else image
        if image.ndim != 3 or image.shape[0] != 3:
            raise ExportError(f"image must be a (3, H, W) array, got shape {tuple(image.shape)}")
        self.check_size(*image.shape[1:])
        try:
            return self.session.run(None, {INPUT_NAMES[0]: image.astype("float32", copy=False)})
        except Exception as e:  # onnxruntime's errors have no public base class
            if "TopK" not in str(e):
                raise
            raise ExportError(
                f"image {image.shape[1]}x{image.shape[2]} is too small for {self.path} (ONNX "
                f"Runtime: {_first_line(e)}): resize it up, or export the file again with "
                "tools/export_model.py, which records the minimum size"
            ) from e
