"""DINO (Zhang et al., ICLR 2023) and Lite-DINO (Li et al., CVPR 2023) as detectron2 models."""

import json
import logging
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import Boxes, ImageList, Instances
from torch import Tensor, nn

from lite_detr.layers import KeyAwareDeformableAttention, MultiScaleDeformableAttention

from ..backbone import fold_batchnorm_at_inference
from ..box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh
from ..decoders import MLP
from ..query_selection import gen_encoder_output_proposals, get_valid_ratio

__all__ = ["DINO", "LiteDINO", "VariantTag", "has_padding"]

logger = logging.getLogger(__name__)


def has_padding(images: ImageList) -> bool:
    """Whether any image of the batch is smaller than the padded tensor (from the sizes on the
    host: no device read)."""
    h, w = images.tensor.shape[-2:]
    return any(ih != h or iw != w for ih, iw in images.image_sizes)


class VariantTag(nn.Module):
    """Architecture strings kept in the state dict, so that weights of one variant never load
    silently into another (e.g. an H2L2 checkpoint into an H3L1 model: same parameter names and
    shapes, near-zero AP).

    The tags are stored as the module's ``_extra_state`` (a uint8 tensor of JSON, so that
    detectron2's checkpointer can handle it); :meth:`set_extra_state` raises on a mismatch, which
    makes a plain ``model.load_state_dict`` fail too.
    """

    # human-readable names used in error messages
    _NAMES = {"encoder": "encoder variant", "decoder": "decoder cross-attention"}

    def __init__(self, **tags: str):
        super().__init__()
        self.tags = dict(tags)

    @staticmethod
    def decode(state: Tensor) -> Dict[str, str]:
        return json.loads(bytes(state.cpu().to(torch.uint8).tolist()).decode("utf-8"))

    def get_extra_state(self) -> Tensor:
        data = json.dumps(self.tags, sort_keys=True).encode("utf-8")
        return torch.tensor(list(data), dtype=torch.uint8)

    def check(self, state: Tensor) -> None:
        """Raise ValueError naming both variants if ``state`` (a saved tag) differs from ours."""
        saved = self.decode(state)
        keys = [k for k in self._NAMES if k in saved or k in self.tags]
        keys += sorted((set(saved) | set(self.tags)) - set(keys))
        problems = [
            f"checkpoint {self._NAMES.get(k, k)} {saved.get(k)!r} does not match the config's "
            f"{self.tags.get(k)!r}"
            for k in keys
            if saved.get(k) != self.tags.get(k)
        ]
        if problems:
            raise ValueError(
                "; ".join(problems) + " (load weights of the same variant, or change the config)"
            )

    def set_extra_state(self, state: Tensor) -> None:
        self.check(state)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.tags.items())


@META_ARCH_REGISTRY.register()
class DINO(nn.Module):
    """DINO: DETR with Improved DeNoising Anchor Boxes (Zhang et al., arXiv 2203.03605).

    backbone -> multi-scale neck -> transformer encoder (swappable: the deformable baseline or
    Lite DETR's interleaved encoder) -> mixed query selection (top-k encoder proposals give the
    reference boxes, content queries are learned) -> deformable decoder with iterative box
    refinement and look-forward-twice; contrastive denoising queries in training.

    ``encoder`` / ``decoder`` / ``criterion`` / ``denoising`` are generic, so Deformable DETR
    (two-stage) and H-DETR reuse this class with other modules and ``denoising=None``; subclasses
    change the content queries (:meth:`content_queries`, with ``learned_content_queries = False``
    when they need no learned ones) or the training step (:meth:`forward_training`).
    """

    # mixed query selection: one learned content query per selected proposal (``tgt_embed``)
    learned_content_queries: bool = True

    @configurable
    def __init__(
        self,
        *,
        backbone: nn.Module,
        neck: nn.Module,
        position_embedding: nn.Module,
        encoder: nn.Module,
        decoder: nn.Module,
        criterion: nn.Module,
        num_classes: int,
        embed_dim: int = 256,
        num_queries: int = 900,
        num_feature_levels: int = 4,
        denoising: nn.Module | None = None,
        select_box_nums_for_evaluation: int = 300,
        pixel_mean: Sequence[float] = (123.675, 116.280, 103.530),
        pixel_std: Sequence[float] = (58.395, 57.120, 57.375),
        size_divisibility: int = 0,
    ):
        """
        Args:
            backbone: detectron2 ``Backbone``, image (N, 3, H, W) -> dict of feature maps.
            neck: backbone features -> list of ``num_feature_levels`` maps (N, C, H_l, W_l),
                fine-to-coarse (e.g. :class:`~lite_detr.modeling.backbone.MultiScaleNeck`).
            position_embedding: mask (N, H, W) bool -> (N, C, H, W) (``PositionEmbeddingSine``).
            encoder: ``(query, query_pos, spatial_shapes, level_start_index, valid_ratios,
                key_padding_mask) -> memory (N, S, C)`` with a ``variant`` string property
                (``DeformableEncoder`` or ``InterleavedEncoder``).
            decoder: :class:`~lite_detr.modeling.decoders.DeformableDecoder`.
            criterion: :class:`~lite_detr.modeling.criterion.SetCriterion`.
            num_classes: K foreground classes.
            embed_dim: C, width of the neck, encoder and decoder (checked against them).
            num_queries: matching queries, i.e. encoder proposals selected (900).
            num_feature_levels: L, feature maps from the neck.
            denoising: :class:`~lite_detr.modeling.denoising.ContrastiveDenoising` or None.
            select_box_nums_for_evaluation: detections kept per image at test time (top-k over
                all query-class pairs).
            pixel_mean, pixel_std: RGB statistics on the 0-255 scale (torchvision ImageNet
                weights, as DINO); inputs must be RGB.
            size_divisibility: pad the batch to a multiple of this (0: no constraint).
        """
        super().__init__()
        widths = {
            "decoder.embed_dim": decoder.embed_dim,
            "encoder.embed_dim": getattr(encoder, "embed_dim", embed_dim),
            "neck.out_channels": getattr(neck, "out_channels", embed_dim),
            "2 * position_embedding.num_pos_feats": 2
            * getattr(position_embedding, "num_pos_feats", embed_dim // 2),
        }
        bad = {k: v for k, v in widths.items() if v != embed_dim}
        if bad:
            raise ValueError(f"{type(self).__name__}: embed_dim={embed_dim} but {bad}")
        classes = {
            "decoder.num_classes": decoder.num_classes,
            "criterion.num_classes": getattr(criterion, "num_classes", num_classes),
            "denoising.num_classes": getattr(denoising, "num_classes", num_classes),
        }
        bad = {k: v for k, v in classes.items() if v != num_classes}
        if bad:
            raise ValueError(f"{type(self).__name__}: num_classes={num_classes} but {bad}")
        if len(pixel_mean) != 3 or len(pixel_std) != 3:
            raise ValueError("DINO: pixel_mean and pixel_std must have 3 (RGB) values")
        self.backbone = backbone
        # at inference the backbone's BatchNorms are folded into its convs, channels-last (same
        # parameters and state dict; training unchanged)
        fold_batchnorm_at_inference(backbone)
        self.neck = neck
        self.position_embedding = position_embedding
        self.encoder = encoder
        self.decoder = decoder
        self.criterion = criterion
        self.denoising = denoising
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.num_feature_levels = num_feature_levels
        self.select_box_nums_for_evaluation = select_box_nums_for_evaluation
        self.size_divisibility = size_divisibility

        self.level_embeds = nn.Parameter(torch.empty(num_feature_levels, embed_dim))
        # mixed query selection: proposals from the memory, learned content queries
        self.enc_output = nn.Linear(embed_dim, embed_dim)
        self.enc_output_norm = nn.LayerNorm(embed_dim)
        self.enc_class_embed = nn.Linear(embed_dim, num_classes)
        self.enc_bbox_embed = MLP(embed_dim, embed_dim, 4, 3)
        if self.learned_content_queries:
            self.tgt_embed = nn.Embedding(num_queries, embed_dim)
        self.variant_tag = VariantTag(
            encoder=getattr(encoder, "variant", type(encoder).__name__),
            decoder=getattr(decoder, "cross_attention", type(decoder).__name__),
        )
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """The initialisation of the released DINO / Lite-DINO (and Deformable DETR): Xavier on
        every transformer weight with more than one dimension, the content queries included (the
        release draws them from a normal first, and this pass overrides it), the prediction heads
        not; then the attention modules' own init (offsets) and a normal level embedding."""
        heads = {
            id(p)
            for head in (self.decoder.class_embed, self.decoder.bbox_embed)
            for p in head.parameters()
        }
        transformer = [self.encoder, self.decoder, self.enc_output]
        if self.learned_content_queries:
            transformer.append(self.tgt_embed)
        for module in transformer:
            for p in module.parameters():
                if p.dim() > 1 and id(p) not in heads:
                    nn.init.xavier_uniform_(p)
        for module in self.modules():
            if isinstance(module, (MultiScaleDeformableAttention, KeyAwareDeformableAttention)):
                module.init_weights()
        nn.init.normal_(self.level_embeds)
        # the encoder heads start like the decoder's: prior 0.01, zero box deltas
        nn.init.constant_(self.enc_class_embed.bias, self.decoder.class_embed[0].bias[0].item())
        nn.init.zeros_(self.enc_bbox_embed.layers[-1].weight)
        nn.init.zeros_(self.enc_bbox_embed.layers[-1].bias)

    @classmethod
    def from_config(cls, cfg):
        """Build from a LazyConfig (a DictConfig with a ``model`` node whose ``_target_`` is this
        class): ``DINO(LazyConfig.load(path))``. yacs configs are not supported."""
        from detectron2.config import instantiate
        from omegaconf import DictConfig

        if not isinstance(cfg, DictConfig) or "model" not in cfg:
            raise TypeError(
                f"{cls.__name__} is configured with detectron2 LazyConfig files "
                "(projects/lite_dino/configs/*.py); build it with instantiate(cfg.model)"
            )
        return {k: instantiate(v) for k, v in cfg.model.items() if k != "_target_"}

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ------------------------------------------------------------------ stages
    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        """Normalise and pad the images; ``image_sizes`` keeps each unpadded (h, w)."""
        images = []
        for i, x in enumerate(batched_inputs):
            img = x.get("image") if isinstance(x, dict) else None
            if not isinstance(img, Tensor) or img.dim() != 3 or img.shape[0] != 3:
                raise ValueError(
                    f"{type(self).__name__}: batched_inputs[{i}]['image'] must be a (3, H, W) "
                    f"tensor, got {type(img).__name__}"
                    + (f" of shape {tuple(img.shape)}" if isinstance(img, Tensor) else "")
                )
            images.append((img.to(self.device).float() - self.pixel_mean) / self.pixel_std)
        return ImageList.from_tensors(images, self.size_divisibility)

    def extract_features(self, images: ImageList) -> Tuple[List[Tensor], List[Tensor]]:
        """Backbone + neck.

        Returns:
            feats: L maps (N, C, H_l, W_l) fine-to-coarse; masks: L maps (N, H_l, W_l) bool,
            True = padding.
        """
        n, _, h, w = images.tensor.shape
        img_mask = torch.ones(n, h, w, dtype=torch.bool, device=self.device)
        for i, (ih, iw) in enumerate(images.image_sizes):
            img_mask[i, :ih, :iw] = False
        feats = self.neck(self.backbone(images.tensor))
        if len(feats) != self.num_feature_levels:
            raise ValueError(
                f"{type(self).__name__}: the neck gave {len(feats)} feature levels but "
                f"num_feature_levels={self.num_feature_levels}"
            )
        masks = [
            F.interpolate(img_mask[None].float(), size=f.shape[-2:])[0].to(torch.bool)
            for f in feats
        ]
        return feats, masks

    def encode(
        self, feats: List[Tensor], masks: List[Tensor], padded: bool = True
    ) -> Dict[str, Tensor]:
        """Flatten the levels (fine-to-coarse), add position + level embeddings, run the encoder.

        Args:
            padded: whether any image of the batch is padded (:func:`has_padding`); if not, the
                attention of the encoder and decoder gets no key padding mask (it would be all
                False: same outputs, minus a masking pass over the values in every layer).

        Returns:
            dict with "memory" (N, S, C), "padding_mask" (N, S), "key_padding_mask" (the
            attention's: "padding_mask" or None), "spatial_shapes" (L, 2), "spatial_sizes" (its
            L (H, W) pairs as Python ints), "level_start_index" (L,), "valid_ratios" (N, L, 2).
        """
        src, pos, flat_masks = [], [], []
        for lvl, (feat, mask) in enumerate(zip(feats, masks)):
            src.append(feat.flatten(2).transpose(1, 2))
            p = self.position_embedding(mask).to(feat.dtype).flatten(2).transpose(1, 2)
            pos.append(p + self.level_embeds[lvl].view(1, 1, -1))
            flat_masks.append(mask.flatten(1))
        # Python sizes (symbolic under torch.export / torch.compile) and the ops' int64 tensor
        spatial_sizes = [(f.shape[-2], f.shape[-1]) for f in feats]
        spatial_shapes = torch.tensor(spatial_sizes, dtype=torch.int64, device=self.device)
        level_start_index = torch.cat(
            [spatial_shapes.new_zeros(1), spatial_shapes.prod(1).cumsum(0)[:-1]]
        )
        valid_ratios = torch.stack([get_valid_ratio(m) for m in masks], 1)
        padding_mask = torch.cat(flat_masks, 1)
        key_padding_mask = padding_mask if padded else None
        memory = self.encoder(
            torch.cat(src, 1),
            torch.cat(pos, 1),
            spatial_shapes,
            level_start_index,
            valid_ratios,
            key_padding_mask,
            spatial_sizes=spatial_sizes,
        )
        return {
            "memory": memory,
            "padding_mask": padding_mask,
            "key_padding_mask": key_padding_mask,
            "spatial_shapes": spatial_shapes,
            "spatial_sizes": spatial_sizes,
            "level_start_index": level_start_index,
            "valid_ratios": valid_ratios,
        }

    def select_proposals(self, enc: Dict[str, Tensor]) -> Tuple[Tensor, Dict[str, Tensor]]:
        """Two-stage proposals: the top-``num_queries`` encoder proposals by best class score.

        Returns:
            reference boxes (N, Q, 4) inverse-sigmoid, detached, and the proposals' outputs
            {"pred_logits" (N, Q, K), "pred_boxes" (N, Q, 4)} for the encoder loss.
        """
        memory = enc["memory"]
        if self.num_queries > memory.shape[1]:
            raise ValueError(
                f"{type(self).__name__}: num_queries={self.num_queries} exceeds the "
                f"{memory.shape[1]} encoder tokens of this input; use fewer queries or larger "
                "images"
            )
        output_memory, proposals, _ = gen_encoder_output_proposals(
            memory, enc["padding_mask"], enc["spatial_sizes"]
        )
        output_memory = self.enc_output_norm(self.enc_output(output_memory))
        logits = self.enc_class_embed(output_memory)
        coords_unsig = self.enc_bbox_embed(output_memory) + proposals
        # top-k over every token, as the released DINO / Deformable DETR: padding and border
        # tokens (zeroed memory, +inf box logits) compete too; one selected gets the box
        # (1, 1, 1, 1), which the decoder refines like any other
        topk = torch.topk(logits.max(-1)[0], self.num_queries, dim=1)[1]
        ref_unsig = torch.gather(coords_unsig, 1, topk[..., None].expand(-1, -1, 4))
        interm = {
            "pred_logits": torch.gather(
                logits, 1, topk[..., None].expand(-1, -1, logits.shape[-1])
            ),
            "pred_boxes": ref_unsig.sigmoid(),
        }
        return ref_unsig.detach(), interm

    def content_queries(self, ref_unsig: Tensor, memory: Tensor) -> Tensor:
        """Content queries of the selected proposals: learned ones, the same for every image
        (DINO's mixed query selection, section 3.4).

        Args:
            ref_unsig: (N, Q, 4) reference boxes of the queries, inverse-sigmoid, detached.
            memory: (N, S, C) encoder output.

        Returns:
            (N, Q, C)
        """
        return self.tgt_embed.weight[None].expand(memory.shape[0], -1, -1)

    def select_queries(self, enc: Dict[str, Tensor]) -> Tuple[Tensor, Tensor, Dict[str, Tensor]]:
        """Decoder queries: :meth:`select_proposals` gives the reference boxes,
        :meth:`content_queries` their content.

        Returns:
            content (N, Q, C), reference boxes (N, Q, 4) inverse-sigmoid, detached, and the
            proposals' outputs {"pred_logits", "pred_boxes"} for the encoder loss.
        """
        ref_unsig, interm = self.select_proposals(enc)
        return self.content_queries(ref_unsig, enc["memory"]), ref_unsig, interm

    def decode(
        self,
        enc: Dict[str, Tensor],
        content: Tensor,
        ref_unsig: Tensor,
        attn_mask: Tensor | None = None,
    ) -> Tuple[Tensor, Tensor]:
        """Run the decoder on the encoder output of :meth:`encode`.

        Args:
            content: (N, Q, C) content queries; ref_unsig: (N, Q, 4) inverse-sigmoid boxes.
            attn_mask: (Q, Q) bool decoder self-attention mask, True = blocked, or None.

        Returns:
            logits (num_layers, N, Q, K) and boxes (num_layers, N, Q, 4) normalised cxcywh.
        """
        return self.decoder(
            content,
            ref_unsig,
            enc["memory"],
            enc["spatial_shapes"],
            enc["level_start_index"],
            enc["valid_ratios"],
            enc["key_padding_mask"],
            attn_mask,
        )

    @staticmethod
    def to_outputs(logits: Tensor, boxes: Tensor) -> Dict:
        """(num_layers, N, Q, *) decoder stacks -> the criterion's dict: the last layer's
        "pred_logits" / "pred_boxes" and "aux_outputs" of the earlier layers."""
        return {
            "pred_logits": logits[-1],
            "pred_boxes": boxes[-1],
            "aux_outputs": [
                {"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])
            ],
        }

    # ------------------------------------------------------------------ forward
    def forward(self, batched_inputs: List[Dict]):
        """
        Args:
            batched_inputs: detectron2 list of dicts: "image" (3, H, W) RGB uint8/float tensor,
                in training "instances" with gt_boxes (absolute XYXY in the image) and gt_classes;
                optional "height"/"width" of the requested output resolution.

        Returns:
            training: dict of weighted losses. Inference: list of {"instances": Instances} with
            pred_boxes, scores, pred_classes in the output resolution.
        """
        images = self.preprocess_image(batched_inputs)
        targets = self.prepare_targets(batched_inputs, images) if self.training else None
        enc = self.encode(*self.extract_features(images), padded=has_padding(images))
        content, ref_unsig, interm = self.select_queries(enc)
        if self.training:
            return self.forward_training(enc, content, ref_unsig, interm, targets)
        logits, boxes = self.decode(enc, content, ref_unsig)
        return self.inference(self.to_outputs(logits, boxes), images, batched_inputs)

    def forward_training(
        self,
        enc: Dict[str, Tensor],
        content: Tensor,
        ref_unsig: Tensor,
        interm: Dict[str, Tensor],
        targets: List[Dict],
    ) -> Dict[str, Tensor]:
        """Training step after query selection: adds the denoising queries, decodes, and returns
        the weighted losses (suffixes "_{i}" of the auxiliary layers, "_enc" of the proposals,
        "_dn" of the denoising queries).

        Args:
            enc: output of :meth:`encode`; content, ref_unsig, interm: of :meth:`select_queries`.
            targets: of :meth:`prepare_targets`.
        """
        dn = None
        attn_mask = None
        if self.denoising is not None:
            dn = self.denoising(targets, self.num_queries)
            if dn is not None:
                dn_content, dn_ref, attn_mask, dn_meta = dn
                content = torch.cat([dn_content.to(content.dtype), content], 1)
                ref_unsig = torch.cat([dn_ref.to(ref_unsig.dtype), ref_unsig], 1)

        logits, boxes = self.decode(enc, content, ref_unsig, attn_mask)
        pad = dn[3]["pad_size"] if dn is not None else 0
        outputs = self.to_outputs(logits[:, :, pad:], boxes[:, :, pad:])
        outputs["interm_outputs"] = interm
        if dn is not None:
            outputs["dn_outputs"] = self.to_outputs(logits[:, :, :pad], boxes[:, :, :pad])
        losses = self.criterion(outputs, targets, dn[3] if dn is not None else None)
        if self.denoising is not None and dn is None:
            # no ground truth in the batch: same loss keys, and every parameter still gets a
            # gradient (DDP without find_unused_parameters)
            zero = sum(p.sum() for p in self.denoising.parameters()) * 0.0
            suffixes = ["_dn"] + [f"_dn_{i}" for i in range(logits.shape[0] - 1)]
            for base in self.criterion.weight_dict:
                losses.update({base + s: zero for s in suffixes})
        return losses

    def prepare_targets(self, batched_inputs: List[Dict], images: ImageList) -> List[Dict]:
        """Ground truth as normalised cxcywh boxes of the unpadded image, int64 labels."""
        targets = []
        for i, x in enumerate(batched_inputs):
            if "instances" not in x:
                raise ValueError(
                    f"{type(self).__name__}: training needs batched_inputs[{i}]['instances'] "
                    "with gt_boxes and gt_classes"
                )
            inst = x["instances"].to(self.device)
            h, w = images.image_sizes[i]
            scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=self.device)
            labels = inst.gt_classes.to(torch.int64)
            if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise ValueError(
                    f"{type(self).__name__}: gt_classes of image {i} must be in "
                    f"[0, {self.num_classes}), got values {labels.unique().tolist()}"
                )
            boxes = box_xyxy_to_cxcywh(inst.gt_boxes.tensor.float() / scale)
            targets.append({"labels": labels, "boxes": boxes})
        return targets

    def select_detections(self, logits: Tensor, boxes: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """The ``select_box_nums_for_evaluation`` best (query, class) pairs of each image.

        Args:
            logits: (N, Q, K) last decoder layer; boxes: (N, Q, 4) normalised cxcywh.

        Returns:
            scores (N, k) descending, labels (N, k) int64, boxes (N, k, 4) normalised xyxy.
        """
        n, q, k = logits.shape
        num = min(self.select_box_nums_for_evaluation, q * k)
        scores, idx = torch.topk(logits.sigmoid().view(n, -1), num, dim=1)
        labels = idx % k
        boxes = torch.gather(boxes, 1, (idx // k)[..., None].expand(-1, -1, 4))
        return scores, labels, box_cxcywh_to_xyxy(boxes)

    def inference(
        self, outputs: Dict[str, Tensor], images: ImageList, batched_inputs: List[Dict]
    ) -> List[Dict[str, Instances]]:
        """Top-k (query, class) pairs per image -> Instances in the requested output size.

        As the released DINO's post-processing: sigmoid scores, top-k over all (query, class)
        pairs (:meth:`select_detections`), normalised boxes scaled straight to the output size;
        no NMS, no clipping to the image and no removal of empty boxes (detectron2's
        ``detector_postprocess`` would do both).
        """
        scores, labels, boxes = self.select_detections(
            outputs["pred_logits"], outputs["pred_boxes"]
        )
        results = []
        for i, (h, w) in enumerate(images.image_sizes):
            height = batched_inputs[i].get("height", h)
            width = batched_inputs[i].get("width", w)
            r = Instances((height, width))
            scale = torch.tensor([width, height, width, height], dtype=boxes.dtype)
            r.pred_boxes = Boxes(boxes[i] * scale.to(boxes.device))
            r.scores = scores[i]
            r.pred_classes = labels[i]
            results.append({"instances": r})
        return results


@META_ARCH_REGISTRY.register()
class LiteDINO(DINO):
    """Lite-DINO (Li et al., "Lite DETR", CVPR 2023): DINO whose encoder is the interleaved
    encoder with key-aware deformable attention. Same code as :class:`DINO`; the encoder and
    the attention type come from the config."""
