"""The authors' released Lite-DINO R50 checkpoints: names, variants, and their conversion to this
project's state dict (``docs/released_weights.md`` describes the release layout).

The release stores a DINO-codebase state dict under ``"model"``: a torchvision ResNet-50
(``backbone.0.body.*``), 91 class rows indexed by COCO category id (92 for the denoising label
embedding), and every prediction head twice (``class_embed.i`` and
``transformer.decoder.class_embed.i`` are one module). :func:`convert_released_state_dict` maps it
onto the state dict of one of our Lite-DINO R50 configs built with
``model.num_ranking_only_classes=11`` and adds that model's variant tag, so that the converted
file loads strictly into that config and is refused by the others.

The release ranks over all 91 rows: a token's best logit among them decides the top-900 query
selection, and its post-processing takes the top-300 of all 91 x 900 scores. The 11 rows of ids
that no COCO class uses (:func:`ranking_only_ids`) are therefore kept, after the 80 classes, as
ranking-only rows: the model ranks with them and drops their detections after the top-k, so the
selected queries and the detections of the 80 classes are the release's.
"""

import dataclasses
import re
from typing import Callable, Dict, List, Sequence, Tuple

import torch
from torch import Tensor

__all__ = [
    "ConversionError",
    "ReleasedVariant",
    "RELEASED_VARIANTS",
    "variant_from_filename",
    "coco_category_ids",
    "convert_released_state_dict",
    "ranking_only_ids",
    "RELEASE_CLASS_ROWS",
]

#: class-head rows of the release: COCO category ids 0..90
RELEASE_CLASS_ROWS = 91


class ConversionError(ValueError):
    """A checkpoint that cannot be converted; the message names the key or file and the fix."""


@dataclasses.dataclass(frozen=True)
class ReleasedVariant:
    """One released checkpoint: its file name, the token naming the variant in it (``s{H}ex{B}``:
    H high-level scales, B blocks), our config and the COCO val AP the authors report."""

    file_name: str
    file_token: str
    config: str
    coco_ap: float


RELEASED_VARIANTS: Dict[str, ReleasedVariant] = {
    "h3l1_a2b3": ReleasedVariant(
        "r50_s3ex3_50.4.pth",
        "s3ex3",
        "projects/lite_dino/configs/lite_dino_r50_4scale_h3l1_a2b3_36ep.py",
        50.4,
    ),
    "h2l2_a2b3": ReleasedVariant(
        "r50_s2ex3_49.9.pth",
        "s2ex3",
        "projects/lite_dino/configs/lite_dino_r50_4scale_h2l2_a2b3_36ep.py",
        49.9,
    ),
    "h3l1_a6b1": ReleasedVariant(
        "r50_s3ex1_50.2.pth",
        "s3ex1",
        "projects/lite_dino/configs/lite_dino_r50_4scale_h3l1_a6b1_36ep.py",
        50.2,
    ),
}

_TAG_KEY = "variant_tag._extra_state"


def variant_from_filename(path: str) -> str | None:
    """Our variant name (e.g. ``"h3l1_a2b3"``) from the ``s3ex3`` / ``s2ex3`` / ``s3ex1`` token in
    a file name, or None when the name holds none of them (or several)."""
    name = re.split(r"[\\/]", path)[-1].lower()
    found = {
        variant
        for variant, info in RELEASED_VARIANTS.items()
        if re.search(rf"(?<![a-z0-9]){info.file_token}(?![0-9])", name)
    }
    return found.pop() if len(found) == 1 else None


def coco_category_ids() -> List[int]:
    """COCO category ids of detectron2's 80 contiguous classes, in contiguous order."""
    from detectron2.data import MetadataCatalog
    from detectron2.data.datasets import builtin  # noqa: F401  (registers the COCO metadata)

    id_map = MetadataCatalog.get("coco_2017_val").thing_dataset_id_to_contiguous_id
    return sorted(id_map, key=id_map.get)


def ranking_only_ids(class_ids: Sequence[int]) -> List[int]:
    """The release rows (COCO ids 0..90) that none of ``class_ids`` uses, ascending: for COCO
    0, 12, 26, 29, 30, 45, 66, 68, 69, 71, 83. They follow the K class rows in a converted head."""
    used = set(class_ids)
    return [i for i in range(RELEASE_CLASS_ROWS) if i not in used]


# ----------------------------------------------------------------------------------- key mapping
# Each rule maps a release key (full match) to our key; the replacement may be a function of the
# match. Keys matched by _DROPPED are left out with the reason shown in the summary.

_BACKBONE = r"backbone\.0\.body\."


def _res(m: re.Match) -> str:
    return f"backbone.res{int(m['layer']) + 1}.{m['block']}"


_RULES: List[Tuple[str, str | Callable[[re.Match], str]]] = [
    # torchvision ResNet -> detectron2 ResNet (stride in the 3x3 conv in both)
    (_BACKBONE + r"conv1\.weight", "backbone.stem.conv1.weight"),
    (_BACKBONE + r"bn1\.(?P<p>\w+)", lambda m: f"backbone.stem.conv1.norm.{m['p']}"),
    (
        _BACKBONE + r"layer(?P<layer>[1-4])\.(?P<block>\d+)\.conv(?P<i>[1-3])\.weight",
        lambda m: f"{_res(m)}.conv{m['i']}.weight",
    ),
    (
        _BACKBONE + r"layer(?P<layer>[1-4])\.(?P<block>\d+)\.bn(?P<i>[1-3])\.(?P<p>\w+)",
        lambda m: f"{_res(m)}.conv{m['i']}.norm.{m['p']}",
    ),
    (
        _BACKBONE + r"layer(?P<layer>[1-4])\.(?P<block>\d+)\.downsample\.0\.weight",
        lambda m: f"{_res(m)}.shortcut.weight",
    ),
    (
        _BACKBONE + r"layer(?P<layer>[1-4])\.(?P<block>\d+)\.downsample\.1\.(?P<p>\w+)",
        lambda m: f"{_res(m)}.shortcut.norm.{m['p']}",
    ),
    # input projections -> neck (resolved against the number of backbone levels, see _neck_key)
    (r"input_proj\.(?P<i>\d+)\.(?P<j>[01])\.(?P<p>weight|bias)", "neck"),
    (r"transformer\.level_embed", "level_embeds"),
    # encoder
    (
        r"transformer\.encoder\.layers\.(?P<i>\d+)\.self_attn\."
        r"(?P<m>sampling_offsets|value_proj|query_proj|output_proj)\.(?P<p>weight|bias)",
        lambda m: f"encoder.layers.{m['i']}.self_attn.{m['m']}.{m['p']}",
    ),
    (
        r"transformer\.encoder\.layers\.(?P<i>\d+)\.(?P<m>norm1|norm2)\.(?P<p>weight|bias)",
        lambda m: f"encoder.layers.{m['i']}.{m['m']}.{m['p']}",
    ),
    (
        r"transformer\.encoder\.layers\.(?P<i>\d+)\.linear(?P<j>[12])\.(?P<p>weight|bias)",
        lambda m: f"encoder.layers.{m['i']}.ffn.linear{m['j']}.{m['p']}",
    ),
    # the light FFN of the low-level tokens and its norm (last layer of each block)
    (
        r"transformer\.encoder\.layers\.(?P<i>\d+)\.linear(?P<j>[12])2\.(?P<p>weight|bias)",
        lambda m: f"encoder.layers.{m['i']}.low_ffn.linear{m['j']}.{m['p']}",
    ),
    (
        r"transformer\.encoder\.layers\.(?P<i>\d+)\.norm22\.(?P<p>weight|bias)",
        lambda m: f"encoder.layers.{m['i']}.low_norm.{m['p']}",
    ),
    # decoder: norm2 follows self-attention, norm1 cross-attention, norm3 the FFN
    (
        r"transformer\.decoder\.layers\.(?P<i>\d+)\.self_attn\."
        r"(?P<p>in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)",
        lambda m: f"decoder.layers.{m['i']}.self_attn.{m['p']}",
    ),
    (
        r"transformer\.decoder\.layers\.(?P<i>\d+)\.cross_attn\."
        r"(?P<m>sampling_offsets|value_proj|query_proj|output_proj)\.(?P<p>weight|bias)",
        lambda m: f"decoder.layers.{m['i']}.cross_attn.{m['m']}.{m['p']}",
    ),
    (
        r"transformer\.decoder\.layers\.(?P<i>\d+)\.norm(?P<j>[123])\.(?P<p>weight|bias)",
        lambda m: f"decoder.layers.{m['i']}."
        + {"1": "cross_attn_norm", "2": "self_attn_norm", "3": "ffn_norm"}[m["j"]]
        + f".{m['p']}",
    ),
    (
        r"transformer\.decoder\.layers\.(?P<i>\d+)\.linear(?P<j>[12])\.(?P<p>weight|bias)",
        lambda m: f"decoder.layers.{m['i']}.ffn.linear{m['j']}.{m['p']}",
    ),
    (r"transformer\.decoder\.norm\.(?P<p>weight|bias)", lambda m: f"decoder.norm.{m['p']}"),
    (
        r"transformer\.decoder\.ref_point_head\.layers\.(?P<i>\d+)\.(?P<p>weight|bias)",
        lambda m: f"decoder.ref_point_head.layers.{m['i']}.{m['p']}",
    ),
    (
        r"transformer\.decoder\.class_embed\.(?P<i>\d+)\.(?P<p>weight|bias)",
        lambda m: f"decoder.class_embed.{m['i']}.{m['p']}",
    ),
    (
        r"transformer\.decoder\.bbox_embed\.(?P<i>\d+)\.layers\.(?P<j>\d+)\.(?P<p>weight|bias)",
        lambda m: f"decoder.bbox_embed.{m['i']}.layers.{m['j']}.{m['p']}",
    ),
    # two-stage query selection
    (r"transformer\.tgt_embed\.weight", "tgt_embed.weight"),
    (r"transformer\.enc_output\.(?P<p>weight|bias)", lambda m: f"enc_output.{m['p']}"),
    (r"transformer\.enc_output_norm\.(?P<p>weight|bias)", lambda m: f"enc_output_norm.{m['p']}"),
    (
        r"transformer\.enc_out_class_embed\.(?P<p>weight|bias)",
        lambda m: f"enc_class_embed.{m['p']}",
    ),
    (
        r"transformer\.enc_out_bbox_embed\.layers\.(?P<j>\d+)\.(?P<p>weight|bias)",
        lambda m: f"enc_bbox_embed.layers.{m['j']}.{m['p']}",
    ),
    # contrastive denoising label embedding
    (r"label_enc\.weight", "denoising.label_enc.weight"),
]

# the release's top-level heads are the decoder's modules under a second name
_DUPLICATE_HEAD = re.compile(r"(?P<head>class_embed|bbox_embed)\.(?P<rest>\d+\..*)")
_DROPPED = [
    (re.compile(r".*\.num_batches_tracked"), "BatchNorm step counter (frozen BatchNorm has none)"),
]

# class rows: the release has one row per COCO id 0..90 (label_enc: 0..91)
_CLASS_ROWS = re.compile(r"(decoder\.class_embed\.\d+|enc_class_embed)\.(weight|bias)")
_LABEL_ROWS = "denoising.label_enc.weight"


def _neck_key(m: re.Match, num_inputs: int) -> str:
    i = int(m["i"])
    conv = f"input_convs.{i}" if i < num_inputs else f"extra_convs.{i - num_inputs}"
    return f"neck.{conv}.{m['j']}.{m['p']}"


def _rename(key: str, num_inputs: int) -> str | None:
    for pattern, target in _RULES:
        m = re.fullmatch(pattern, key)
        if m is None:
            continue
        if target == "neck":
            return _neck_key(m, num_inputs)
        return target if isinstance(target, str) else target(m)
    return None


def _fmt(keys: Sequence[str], limit: int = 5) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _shape(t: Tensor) -> Tuple[int, ...]:
    return tuple(t.shape)


def convert_released_state_dict(
    state: Dict[str, Tensor],
    expected: Dict[str, Tensor],
    class_ids: Sequence[int],
) -> Tuple[Dict[str, Tensor], Dict[str, List[str]]]:
    """Map a released Lite-DINO state dict onto one of our models' state dicts.

    Args:
        state: the release's ``checkpoint["model"]`` (a DDP ``module.`` prefix is removed).
        expected: ``model.state_dict()`` of the target model (names, shapes, shared heads and its
            ``variant_tag._extra_state``, which the result carries), built with
            ``num_ranking_only_classes=len(ranking_only_ids(class_ids))``.
        class_ids: release row of each of our classes (COCO category id of each contiguous class,
            :func:`coco_category_ids`). The class heads get these rows, then the
            :func:`ranking_only_ids` rows; the denoising label embedding only these rows.

    Returns:
        the converted state dict (``expected``'s keys and order) and the dropped release keys,
        grouped by reason.

    Raises:
        ConversionError: a key this function does not know, a key the target needs that the
            release lacks, a shape that does not fit, or heads that are not shared as the target's.
    """
    state = {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise ConversionError(f"the state dict holds non-tensor values under {_fmt(bad)}")
    if _TAG_KEY in state:
        raise ConversionError(
            "this is already a checkpoint of this project (it has a variant tag): load it "
            "directly with train.init_checkpoint=..., no conversion needed"
        )
    num_inputs = len({k.split(".")[2] for k in expected if k.startswith("neck.input_convs.")})
    out: Dict[str, Tensor] = {}
    source: Dict[str, str] = {}  # our key -> release key
    dropped: Dict[str, List[str]] = {}
    duplicates: Dict[str, str] = {}  # release top-level head key -> its decoder twin
    unknown = []
    for key, value in state.items():
        reason = next((r for p, r in _DROPPED if p.fullmatch(key)), None)
        if reason is not None:
            dropped.setdefault(reason, []).append(key)
            continue
        m = _DUPLICATE_HEAD.fullmatch(key)
        if m is not None:
            duplicates[key] = f"transformer.decoder.{m['head']}.{m['rest']}"
            continue
        ours = _rename(key, num_inputs)
        if ours is None or ours not in expected:
            unknown.append(key)
            continue
        out[ours] = value
        source[ours] = key
    if unknown:
        raise ConversionError(
            f"unknown key(s) {_fmt(unknown)}: not a Lite-DINO R50 key of the authors' release, "
            "or a layer this variant's config does not have (check --variant)"
        )
    for key, twin in duplicates.items():
        if twin not in state:
            raise ConversionError(f"{key} has no twin {twin}: is this a Lite-DINO checkpoint?")
        if not torch.equal(state[key], state[twin]):
            raise ConversionError(
                f"{key} differs from {twin}: the release stores one module under both names"
            )
    dropped["duplicate of transformer.decoder.* (same module)"] = sorted(duplicates)

    # class rows: COCO ids -> contiguous classes, then the ranking-only rows (class heads only:
    # the label embedding serves the denoising queries of training)
    class_ids = list(class_ids)
    extra = ranking_only_ids(class_ids)
    head_rows = expected["enc_class_embed.bias"].shape[0]
    if head_rows != len(class_ids) + len(extra):
        raise ConversionError(
            f"the target model's class heads have {head_rows} rows, the conversion writes "
            f"{len(class_ids)} classes + {len(extra)} ranking-only rows: build it with "
            f"model.num_ranking_only_classes={len(extra)}"
        )
    for ours, value in list(out.items()):
        if _CLASS_ROWS.fullmatch(ours) or ours == _LABEL_ROWS:
            label = ours == _LABEL_ROWS
            need = RELEASE_CLASS_ROWS + label
            if value.shape[0] != need:
                raise ConversionError(
                    f"{source[ours]} has shape {_shape(value)}: expected {need} rows, one per "
                    f"COCO category id 0..{need - 1}"
                )
            rows = torch.as_tensor(class_ids if label else class_ids + extra, dtype=torch.long)
            out[ours] = value.index_select(0, rows)

    missing = [k for k in expected if k != _TAG_KEY and k not in out]
    if missing:
        raise ConversionError(
            f"the checkpoint lacks {_fmt(missing)} (our names) that this variant needs: "
            "is it a Lite-DINO R50 release checkpoint of this variant?"
        )
    wrong = [
        f"{source[k]} {_shape(v)} (needs {_shape(expected[k])} for {k})"
        for k, v in out.items()
        if _shape(v) != _shape(expected[k])
    ]
    if wrong:
        raise ConversionError(f"shape does not fit: {'; '.join(wrong[:3])}")
    _check_shared(out, expected)
    if _TAG_KEY in expected:
        out[_TAG_KEY] = expected[_TAG_KEY].clone()
    return {k: out[k].contiguous() for k in expected}, dropped


def _check_shared(out: Dict[str, Tensor], expected: Dict[str, Tensor]) -> None:
    """Heads the target shares across decoder layers must be equal in the checkpoint: loading
    different tensors into one shared module would silently keep the last."""
    for key in expected:
        m = re.fullmatch(r"decoder\.(class_embed|bbox_embed)\.(\d+)\.(.*)", key)
        if m is None or m[2] == "0":
            continue
        first = f"decoder.{m[1]}.0.{m[3]}"
        if expected[key].data_ptr() == expected[first].data_ptr() and not torch.equal(
            out[key], out[first]
        ):
            raise ConversionError(
                f"transformer.decoder.{m[1]}.{m[2]}.{m[3]} differs from layer 0's, but the "
                "config shares one head across decoder layers (as the release does)"
            )
