#!/usr/bin/env python
"""What each inference speed-up of the backbone and the encoder buys (issue 16): one detector
timed with the steps switched on one after the other, the configurations taking turns in every
round (so that a change of machine load hits all of them), median over ``--runs`` rounds.

Steps (cumulative; "today" runs none of them, i.e. the forward before they existed). Steps 1, 2,
6 and 7 are what :func:`lite_detr.deploy.optimize_for_cpu_inference` does to a model; the last
row's model is deployed by that function itself, as the tools deploy theirs (with the freed
memory reused, as ``tools/demo.py`` and ``tools/benchmark.py`` do), so that row is the tools'
path.

1. ``fold BN``: FrozenBatchNorm folded into the backbone's convs (cached folded weights).
2. ``channels-last``: the folded weights, and so the backbone's feature maps, channels-last.
3. ``no padding mask``: an unpadded batch gives the attention no key padding mask.
4. ``reuse freed memory``: glibc keeps freed blocks for the next tensor instead of unmapping them
   (``lite_detr.utils.malloc``; switched on around that row's runs only, and the memory given
   back after them, so that the other rows run with glibc's defaults). As in a process that
   serves images, the heap is warm: that row runs each round's image twice and times the second.
5. ``contiguous sampling locations``: ``ref + offset / (W, H)`` computed over the L*P*2 values of
   a query and head laid out contiguously (``lite_detr.layers.deformable_sampling``), instead of
   broadcasting (L, 1, 2) into (L, P, 2); the rows before it run the broadcasting expression,
   kept here (:func:`broadcast_sampling_locations`).
6. ``FFN in token chunks``: at inference the FFN runs 1024 tokens at a time
   (``lite_detr.layers.TokenChunkedFFN``), so the (tokens, 2048) hidden stays in the cache
   between its two linears; the rows before it run the plain ``FFN`` (all at once).
7. ``linears through oneDNN``: the linears over >= 1024 tokens run as oneDNN 1x1 convolutions
   instead of MKL's GEMM (``lite_detr.layers.OneDNNLinear``); the rows before it run the plain
   ``nn.Linear``.
8. ``box head on the selected tokens``: the two-stage box head runs on the 900 selected tokens
   instead of all of them (``TwoStageDetrBase.select_proposals``); the rows before it run the old
   selection, kept here (:func:`boxes_of_every_token`).

The CPU time (of all the process's threads, ``time.process_time``) grows less than the wall time
on a loaded machine, where another process takes the cores in the middle of an op.

Each row's outputs are compared with today's: the encoder memory (largest difference relative to
its largest value), the ranks of the two-stage selection whose proposal box differs from today's
(proposals of equal or near-equal logits trade ranks at a rounding change, and DINO's query of
rank q takes the q-th learned content embedding, so a swap changes those queries' detections),
and the detections, each matched to today's detection of its class with the
nearest box (top-k over (query, class) pairs: detections of near-equal scores may swap ranks, so
ranks are not compared, nor the detections at the cut): the share within lite_detr.export's
tolerances (score 1e-4, box 0.05 px) and the largest differences. Weights are random (seed 0);
the FrozenBatchNorm statistics are drawn at random too (scale 0.75-1.25, shift +-0.1), so that
folding is not an identity.

    python benchmarks/bench_inference.py                    # Lite-DINO R50, 800x1333, 2 threads
    python benchmarks/bench_inference.py --runs 3 \
        --config projects/lite_dino/configs/models/dino_r50.py
"""

import argparse
import contextlib
import copy
import os
import statistics
import time
import types

import lite_detr  # noqa: F401  (first: quiets fvcore's import warning, see lite_detr/__init__.py)

# isort: split
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.layers import FrozenBatchNorm2d
from torch import nn

from lite_detr.deploy import optimize_for_cpu_inference, swap_module_class
from lite_detr.export import BOX_TOLERANCE, SCORE_TOLERANCE
from lite_detr.layers import (
    FFN,
    OneDNNLinear,
    TokenChunkedFFN,
    key_aware_attention,
    multi_scale_deform_attn,
)
from lite_detr.layers.deformable_sampling import compute_sampling_locations
from lite_detr.modeling.backbone import fold_batchnorm_at_inference
from lite_detr.modeling.meta_arch.two_stage import has_padding, requested_sizes
from lite_detr.ops import compiled_ops_available
from lite_detr.utils.malloc import freed_memory_reused

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DEFAULT_CONFIG = os.path.join(
    ROOT, "projects", "lite_dino", "configs", "models", "lite_dino_r50.py"
)
# label -> (fold BN, channels-last, no padding mask, reuse freed memory, contiguous locations,
# FFN in token chunks, linears through oneDNN, box head on the selected tokens)
STEPS = {
    "today": (False, False, False, False, False, False, False, False),
    "+ fold BN": (True, False, False, False, False, False, False, False),
    "+ channels-last": (True, True, False, False, False, False, False, False),
    "+ no padding mask": (True, True, True, False, False, False, False, False),
    "+ reuse freed memory": (True, True, True, True, False, False, False, False),
    "+ contiguous sampling locations": (True, True, True, True, True, False, False, False),
    "+ FFN in token chunks": (True, True, True, True, True, True, False, False),
    "+ linears through oneDNN": (True, True, True, True, True, True, True, False),
    "+ box head on the selected tokens": (True, True, True, True, True, True, True, True),
}
LAST = "+ box head on the selected tokens"  # all steps, i.e. the tools' path
# the modules that call compute_sampling_locations (each imported the name)
_LOCATION_USERS = (key_aware_attention, multi_scale_deform_attn)


def broadcast_sampling_locations(reference_points, sampling_offsets, spatial_shapes):
    """The sampling locations as computed before step 5: the same values, by broadcasting."""
    if reference_points.shape[-1] == 2:
        normalizer = spatial_shapes.flip(-1).to(sampling_offsets.dtype)
        return (
            reference_points[:, :, None, :, None, :]
            + sampling_offsets / normalizer[None, None, None, :, None, :]
        )
    num_points = sampling_offsets.shape[4]
    return (
        reference_points[:, :, None, :, None, :2]
        + sampling_offsets / num_points * reference_points[:, :, None, :, None, 2:] * 0.5
    )


@contextlib.contextmanager
def sampling_locations(contiguous):
    """The library's compute_sampling_locations, or (``contiguous=False``) the one before."""
    fn = compute_sampling_locations if contiguous else broadcast_sampling_locations
    for module in _LOCATION_USERS:
        module.compute_sampling_locations = fn
    try:
        yield
    finally:
        for module in _LOCATION_USERS:
            module.compute_sampling_locations = compute_sampling_locations


def boxes_of_every_token(model, enc, num_queries=None):
    """``select_proposals`` as before step 8: every token's proposal box, then the top ones."""
    logits, coords_unsig = model.proposals(enc, num_queries)
    num_queries = model.num_queries if num_queries is None else num_queries
    return model.gather_proposals(logits, coords_unsig, model.top_tokens(logits, num_queries))


def randomize_frozen_bn(model, seed=0):
    """Trained-looking FrozenBatchNorm statistics (the init's are an identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, FrozenBatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
                m.running_mean.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)


def detect(model, inputs, skip_padding_mask):
    """``model(inputs)`` at inference, with the padding-mask step on or off."""
    images = model.preprocess_image(inputs)
    padded = has_padding(images) if skip_padding_mask else True
    enc = model.encode(*model.extract_features(images), padded=padded)
    content, ref_unsig, _ = model.select_queries(enc)
    logits, boxes = model.decode(enc, content, ref_unsig)
    sizes = requested_sizes(inputs, images)
    detections = model.postprocess(logits[-1], boxes[-1], sizes)
    return model.inference(detections, sizes), ref_unsig


class StageTimer:
    """Wall time of backbone + neck (with the image normalisation), encoder, and the rest."""

    def __init__(self, model):
        self.marks = {}
        model.neck.register_forward_hook(lambda m, i, o: self._mark("neck_end"))
        model.encoder.register_forward_pre_hook(lambda m, i: self._mark("encoder_start"))
        model.encoder.register_forward_hook(self._encoder_end)
        self.memory = None
        self.references = None  # (1, Q, 4) the selected proposal boxes, inverse-sigmoid

    def _mark(self, name):
        self.marks[name] = time.perf_counter()

    def _encoder_end(self, module, inputs, output):
        self._mark("encoder_end")
        self.memory = output

    def run(self, model, inputs, skip_padding_mask):
        cpu = time.process_time()
        start = time.perf_counter()
        with torch.no_grad():
            out = detect(model, inputs, skip_padding_mask)
        end = time.perf_counter()
        cpu = time.process_time() - cpu
        m = self.marks
        backbone = m["neck_end"] - start
        encoder = m["encoder_end"] - m["encoder_start"]
        times = {
            "backbone": backbone,
            "encoder": encoder,
            "decoder": end - start - backbone - encoder,
            "total": end - start,
            "cpu": cpu,
        }
        results, self.references = out
        return times, results[0]["instances"]


def compare(inst, ref):
    """Each detection of ``inst`` matched to the detection of ``ref`` of its class with the
    nearest box: (share within the export tolerances, max |score diff|, max |box diff| px)."""
    boxes, ref_boxes = inst.pred_boxes.tensor, ref.pred_boxes.tensor
    dist = (boxes[:, None] - ref_boxes[None]).abs().amax(-1)  # (K, K) largest coordinate diff
    dist[inst.pred_classes[:, None] != ref.pred_classes[None]] = float("inf")
    box_diff, nearest = dist.min(1)
    score_diff = (inst.scores - ref.scores[nearest]).abs()
    # at the top-k cut, a detection may trade places with one just outside: not compared
    inside = inst.scores > ref.scores.min() + SCORE_TOLERANCE
    box_diff, score_diff = box_diff[inside], score_diff[inside]
    matched = (box_diff <= BOX_TOLERANCE) & (score_diff <= SCORE_TOLERANCE)
    return float(matched.float().mean()), float(score_diff.max()), float(box_diff.max())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="LazyConfig with a model node")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1333)
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be >= 1 and --warmup >= 0")

    torch.set_num_threads(args.threads)
    if not compiled_ops_available("cpu"):
        print("WARNING: lite_detr._C has no CPU kernels; the attention runs the slow PyTorch path")
    torch.manual_seed(0)
    base = instantiate(LazyConfig.load(args.config).model).eval()
    randomize_frozen_bn(base)
    # one copy per step (same weights), so that no switch invalidates a folded-weight cache
    models = {}
    for label, (fold, channels_last, _, _, _, chunked_ffn, onednn, selected_boxes) in STEPS.items():
        model = models[label] = copy.deepcopy(base)
        if label == LAST:  # every step: the tools' deployment
            optimize_for_cpu_inference(model)
            continue
        if fold:
            fold_batchnorm_at_inference(model, channels_last=channels_last)
        if chunked_ffn:
            swap_module_class(model, FFN, TokenChunkedFFN)
        if onednn:
            swap_module_class(model, nn.Linear, OneDNNLinear)
        if not selected_boxes:
            model.select_proposals = types.MethodType(boxes_of_every_token, model)
    del base, model
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, args.height, args.width), dtype=torch.uint8, generator=g)
    inputs = [{"image": image}]
    print(
        f"{os.path.relpath(args.config, ROOT)}: {args.height}x{args.width}, {args.threads} "
        f"threads, torch {torch.__version__}, load average {os.getloadavg()[0]:.2f}"
    )

    timers = {label: StageTimer(model) for label, model in models.items()}
    runs = {label: [] for label in models}
    outputs, memories, references = {}, {}, {}
    for i in range(args.warmup + args.runs):
        for label, model in models.items():
            steps = STEPS[label]
            with freed_memory_reused(steps[3]) as reused, sampling_locations(steps[4]):
                if reused:  # a process serving images keeps its heap: time the second image
                    timers[label].run(model, inputs, steps[2])
                times, outputs[label] = timers[label].run(model, inputs, steps[2])
            memories[label] = timers[label].memory
            references[label] = timers[label].references
            if i >= args.warmup:
                runs[label].append(times)
    print(f"load average after: {os.getloadavg()[0]:.2f}")

    keys = ("backbone", "encoder", "decoder", "total", "cpu")
    med = {
        label: {k: statistics.median(r[k] for r in rs) for k in keys} for label, rs in runs.items()
    }
    first = next(iter(med))
    print(
        "\n| step | backbone s | encoder s | decoder s | total s | ratio to today | "
        "ratio to previous | CPU s | CPU ratio | memory rel. diff | ranks swapped "
        "| detections matched | max score diff | max box diff px |"
    )
    print("|" + "---|" * 14)
    prev = first
    for label in med:
        row = med[label]
        matched, score, box = compare(outputs[label], outputs[first])
        ref = memories[first]
        memory = float((memories[label] - ref).abs().max() / ref.abs().max())
        # a proposal box moved by a rounding change differs by ~1e-6; one of another token by more
        swapped = int(((references[label] - references[first]).abs().amax(-1) > 1e-3).sum())
        print(
            f"| {label} | {row['backbone']:.2f} | {row['encoder']:.2f} | {row['decoder']:.2f} "
            f"| {row['total']:.2f} | {row['total'] / med[first]['total']:.2f} "
            f"| {row['total'] / med[prev]['total']:.2f} | {row['cpu']:.2f} "
            f"| {row['cpu'] / med[first]['cpu']:.2f} | {memory:.1e} | {swapped} | {matched:.1%} "
            f"| {score:.1e} | {box:.1e} |"
        )
        prev = label


if __name__ == "__main__":
    main()
