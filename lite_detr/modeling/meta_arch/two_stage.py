"""The shared base of two-stage deformable DETRs (Deformable DETR, DINO, H-DETR and their Lite
versions).

What they share (Deformable DETR, Zhu et al., ICLR 2021, section 4.2 "two-stage"): backbone ->
multi-scale neck -> transformer encoder -> one proposal per encoder token -> the top-scoring
proposals become the decoder's reference boxes -> deformable decoder with iterative box
refinement -> focal loss with Hungarian matching, auxiliary losses on every decoder layer and on
the proposals; at test time the top-k (query, class) pairs. What differs is how the selected
proposals become queries (:meth:`TwoStageDeformableDETR.content_queries`,
:meth:`TwoStageDeformableDETR.position_queries`) and what a detector adds
to the training step (:meth:`TwoStageDeformableDETR.forward_training`): see ``dino.py``,
``deformable_detr.py``, ``h_detr.py`` and docs/adding_a_detector.md.
"""

import math
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.structures import Boxes, ImageList, Instances
from torch import Tensor, nn

from lite_detr.layers import ATTENTION_TYPES, MLP

from ..box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh
from ..interfaces import check_decoder, check_encoder
from ..query_selection import gen_encoder_output_proposals, get_valid_ratio
from ..variant_tag import VariantTag

__all__ = ["TwoStageDeformableDETR", "VariantTag", "has_padding", "requested_sizes"]


def requested_sizes(batched_inputs: List[Dict], images: ImageList) -> List[Tuple[int, int]]:
    """The (height, width) each input asks its detections in: its "height" / "width", or the
    image's own size."""
    return [
        (x.get("height", h), x.get("width", w))
        for x, (h, w) in zip(batched_inputs, images.image_sizes)
    ]


def has_padding(images: ImageList) -> bool:
    """Whether any image of the batch is smaller than the padded tensor (from the sizes on the
    host: no device read)."""
    h, w = images.tensor.shape[-2:]
    return any(ih != h or iw != w for ih, iw in images.image_sizes)


# prior probability of the class logits at initialisation (focal loss, RetinaNet)
PRIOR_PROB = 0.01


class _InitialisedOnConstruction(type(nn.Module)):
    """Runs :meth:`TwoStageDeformableDETR.reset_parameters` once the outermost ``__init__`` has
    returned, i.e. after the subclass has created its modules: no detector exists half
    initialised (``level_embeds`` is ``torch.empty`` until then), and no subclass has to
    remember a call at the end of its constructor."""

    def __call__(cls, *args, **kwargs):
        model = super().__call__(*args, **kwargs)
        model.reset_parameters()
        return model


class TwoStageDeformableDETR(nn.Module, metaclass=_InitialisedOnConstruction):
    """Base of the two-stage deformable DETRs; not registered, a detector subclasses it.

    A subclass implements :meth:`content_queries` (and :meth:`position_queries` if the decoder
    does not make them from the boxes) for the selected proposals, creates the modules it needs
    after ``super().__init__()`` and names in :attr:`xavier_query_modules` those that get the
    transformer's Xavier init; :meth:`reset_parameters` runs when construction ends. It may
    extend :meth:`forward_training`. The
    encoder and decoder must follow :class:`~lite_detr.modeling.interfaces.MultiScaleEncoder` and
    :class:`~lite_detr.modeling.interfaces.QueryDecoder` (checked here), and the decoder's
    ``positional_queries`` must be the subclass's :attr:`positional_queries`.
    """

    #: what the decoder's ``positional_queries`` must be: "input" if :meth:`position_queries`
    #: returns them
    positional_queries: str = "reference_boxes"
    #: attribute names of the subclass's query modules that :meth:`reset_parameters` gives the
    #: transformer's Xavier init (those the release keeps inside its transformer)
    xavier_query_modules: Tuple[str, ...] = ()

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
        num_queries: int = 300,
        num_feature_levels: int = 4,
        binary_proposals: bool = False,
        select_box_nums_for_evaluation: int = 100,
        num_ranking_only_classes: int = 0,
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
            encoder: a :class:`~lite_detr.modeling.interfaces.MultiScaleEncoder`
                (``DeformableEncoder`` or ``InterleavedEncoder``).
            decoder: a :class:`~lite_detr.modeling.interfaces.QueryDecoder`
                (:class:`~lite_detr.modeling.decoders.DeformableDecoder`).
            criterion: :class:`~lite_detr.modeling.criterion.SetCriterion`.
            num_classes: K foreground classes.
            embed_dim: C, width of the neck, encoder and decoder (checked against them).
            num_queries: Q, encoder proposals selected as decoder queries at inference.
            num_feature_levels: L, feature maps from the neck.
            binary_proposals: how the proposals' K-way classifier is trained and read. True
                (Deformable DETR, H-DETR, as their releases): foreground proposals, ranked by
                channel 0, their loss over all tokens with every target relabelled class 0 (the
                other K - 1 channels trained as negatives only). False (DINO): class-aware
                proposals, ranked by the best class, their loss over the selected proposals.
            select_box_nums_for_evaluation: detections kept per image at test time (top-k over
                all query-class pairs).
            num_ranking_only_classes: U class-head rows after the K classes that take part in
                the rankings but are never reported: the best logit of a token (query selection)
                and the top-k of post-processing run over all K + U rows, and detections of the
                U rows are dropped after the top-k. 0 for models trained here; 11 for converted
                release weights, whose 91 rows (COCO ids 0..90) include 11 ids that no class uses
                (docs/released_weights.md): with them the selection and the detections are the
                release's. The decoder's ``num_ranking_only_classes`` must be the same; no loss
                reaches these rows.
            pixel_mean, pixel_std: RGB statistics on the 0-255 scale (torchvision ImageNet
                weights); inputs must be RGB.
            size_divisibility: pad the batch to a multiple of this (0: no constraint).
        """
        super().__init__()
        name = type(self).__name__
        check_encoder(name, encoder)
        check_decoder(name, decoder)
        if decoder.positional_queries != self.positional_queries:
            raise ValueError(
                f"{name} makes its positional queries for a decoder with "
                f"positional_queries={self.positional_queries!r}, got "
                f"{decoder.positional_queries!r}; set model.decoder.positional_queries="
                f"{self.positional_queries}"
            )
        widths = {
            "decoder.embed_dim": decoder.embed_dim,
            "encoder.embed_dim": encoder.embed_dim,
            "neck.out_channels": getattr(neck, "out_channels", embed_dim),
            "2 * position_embedding.num_pos_feats": 2
            * getattr(position_embedding, "num_pos_feats", embed_dim // 2),
        }
        bad = {k: v for k, v in widths.items() if v != embed_dim}
        if bad:
            raise ValueError(f"{name}: embed_dim={embed_dim} but {bad}")
        if encoder.num_levels != num_feature_levels:
            raise ValueError(
                f"{name}: num_feature_levels={num_feature_levels} but encoder.num_levels="
                f"{encoder.num_levels}"
            )
        classes = {
            "decoder.num_classes": decoder.num_classes,
            "criterion.num_classes": getattr(criterion, "num_classes", num_classes),
        }
        bad = {k: v for k, v in classes.items() if v != num_classes}
        if bad:
            raise ValueError(f"{name}: num_classes={num_classes} but {bad}")
        # a decoder without the attribute has no ranking-only rows
        decoder_rows = getattr(decoder, "num_ranking_only_classes", 0)
        if decoder_rows != num_ranking_only_classes:
            raise ValueError(
                f"{name}: num_ranking_only_classes={num_ranking_only_classes} but "
                f"decoder.num_ranking_only_classes={decoder_rows}"
            )
        if len(pixel_mean) != 3 or len(pixel_std) != 3:
            raise ValueError(f"{name}: pixel_mean and pixel_std must have 3 (RGB) values")
        self.backbone = backbone
        self.neck = neck
        self.position_embedding = position_embedding
        self.encoder = encoder
        self.decoder = decoder
        self.criterion = criterion
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.num_queries = num_queries
        self.num_feature_levels = num_feature_levels
        self.binary_proposals = binary_proposals
        self.select_box_nums_for_evaluation = select_box_nums_for_evaluation
        self.num_ranking_only_classes = num_ranking_only_classes
        self.size_divisibility = size_divisibility

        # drawn by reset_parameters, when the subclass's construction ends
        self.level_embeds = nn.Parameter(torch.empty(num_feature_levels, embed_dim))
        # two-stage proposals: a projection of the memory, a classifier and a box head
        self.enc_output = nn.Linear(embed_dim, embed_dim)
        self.enc_output_norm = nn.LayerNorm(embed_dim)
        self.enc_class_embed = nn.Linear(embed_dim, num_classes + num_ranking_only_classes)
        self.enc_bbox_embed = MLP(embed_dim, embed_dim, 4, 3)
        tags = {"encoder": encoder.variant, "decoder": decoder.cross_attention}
        if num_ranking_only_classes:  # heads of K + U rows: refused by models of K rows
            tags["ranking_only_classes"] = str(num_ranking_only_classes)
        self.variant_tag = VariantTag(**tags)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    def reset_parameters(self) -> None:
        """The initialisation of Deformable DETR's and DINO's releases: Xavier on every
        transformer weight with more than one dimension (encoder, decoder without its heads,
        proposal projection, then the subclass's :attr:`xavier_query_modules`), then the
        attention modules' own init (offsets), a normal level embedding, and the proposal heads
        started as the decoder's (prior 0.01, zero box deltas). Runs when construction ends;
        the backbone, neck and the other modules keep their own init."""
        query_modules = [getattr(self, name) for name in self.xavier_query_modules]
        heads = {
            id(p)
            for head in (self.decoder.class_embed, self.decoder.bbox_embed)
            for p in head.parameters()
        }
        for module in [self.encoder, self.decoder, self.enc_output, *query_modules]:
            for p in module.parameters():
                if p.dim() > 1 and id(p) not in heads:
                    nn.init.xavier_uniform_(p)
        attention_types = tuple(ATTENTION_TYPES.values())
        for module in self.modules():
            if isinstance(module, attention_types):
                module.init_weights()
        nn.init.normal_(self.level_embeds)
        nn.init.constant_(self.enc_class_embed.bias, -math.log((1 - PRIOR_PROB) / PRIOR_PROB))
        nn.init.zeros_(self.enc_bbox_embed.layers[-1].weight)
        nn.init.zeros_(self.enc_bbox_embed.layers[-1].bias)

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
            images.append(self.normalize(img))
        return ImageList.from_tensors(images, self.size_divisibility)

    def normalize(self, image: Tensor) -> Tensor:
        """(3, H, W) image, 0-255, in the model's input format -> (3, H, W) float32 normalised,
        on the model's device."""
        return (image.to(self.device).float() - self.pixel_mean) / self.pixel_std

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

    def proposals(
        self, enc: Dict[str, Tensor], num_queries: int | None = None
    ) -> Tuple[Tensor, Tensor]:
        """Every encoder token's two-stage proposal (Deformable DETR section 4.2).

        Returns:
            logits (N, S, K + U) (K classes, U ranking-only rows; channel 0 the foreground logit
            with ``binary_proposals``) and boxes (N, S, 4) inverse-sigmoid cxcywh.
        """
        output_memory, anchors = self.proposal_features(enc, num_queries)
        logits = self.enc_class_embed(output_memory)
        return logits, self.enc_bbox_embed(output_memory) + anchors

    def proposal_features(
        self, enc: Dict[str, Tensor], num_queries: int | None = None
    ) -> Tuple[Tensor, Tensor]:
        """The inputs of the proposal heads: every token's projected memory (N, S, C) and its
        anchor box (N, S, 4) inverse-sigmoid cxcywh (+inf at padding and border tokens)."""
        num_queries = self.num_queries if num_queries is None else num_queries
        memory = enc["memory"]
        if num_queries > memory.shape[1]:
            raise ValueError(
                f"{type(self).__name__}: {num_queries} queries exceed the "
                f"{memory.shape[1]} encoder tokens of this input; use fewer queries or larger "
                "images"
            )
        output_memory, anchors, _ = gen_encoder_output_proposals(
            memory, enc["padding_mask"], enc["spatial_sizes"]
        )
        return self.enc_output_norm(self.enc_output(output_memory)), anchors

    def gather_proposals(
        self, logits: Tensor, coords_unsig: Tensor, selected: Tensor
    ) -> Tuple[Tensor, Dict[str, Tensor]]:
        """The proposals at token indices ``selected`` (N, Q) of :meth:`proposals`' outputs, in
        that order (query q gets the proposal ``selected[:, q]``); returns as
        :meth:`select_proposals`."""
        ref_unsig = torch.gather(coords_unsig, 1, selected[..., None].expand(-1, -1, 4))
        logits = logits[..., : self.num_classes]  # the loss's classes
        if self.binary_proposals:
            interm = {"pred_logits": logits, "pred_boxes": coords_unsig.sigmoid()}
        else:
            interm = {
                "pred_logits": torch.gather(
                    logits, 1, selected[..., None].expand(-1, -1, logits.shape[-1])
                ),
                "pred_boxes": ref_unsig.sigmoid(),
            }
        return ref_unsig.detach(), interm

    def select_proposals(
        self, enc: Dict[str, Tensor], num_queries: int | None = None
    ) -> Tuple[Tensor, Dict[str, Tensor]]:
        """Two-stage proposals: the top-``num_queries`` (default :attr:`num_queries`) encoder
        proposals by their best logit (by channel 0, the foreground logit, if
        ``binary_proposals``).

        Returns:
            reference boxes (N, Q, 4) inverse-sigmoid, detached, and the proposals' outputs for
            the encoder loss: {"pred_logits", "pred_boxes"} of the selected Q proposals, or of
            all S tokens with ``binary_proposals``.
        """
        num_queries = self.num_queries if num_queries is None else num_queries
        if self.binary_proposals:  # the encoder loss takes every token's proposal
            logits, coords_unsig = self.proposals(enc, num_queries)
            return self.gather_proposals(logits, coords_unsig, self.top_tokens(logits, num_queries))
        # only the selected tokens' boxes are used: the box head runs on those Q rows, not on
        # all S tokens (the same rows of the same MLP: :meth:`proposals` then
        # :meth:`gather_proposals`, up to float rounding; 4% of an 800x1333 inference)
        output_memory, anchors = self.proposal_features(enc, num_queries)
        logits = self.enc_class_embed(output_memory)
        selected = self.top_tokens(logits, num_queries)[..., None]
        ref_unsig = self.enc_bbox_embed(
            torch.gather(output_memory, 1, selected.expand(-1, -1, output_memory.shape[-1]))
        ) + torch.gather(anchors, 1, selected.expand(-1, -1, 4))
        logits = logits[..., : self.num_classes]  # the loss's classes
        interm = {
            "pred_logits": torch.gather(logits, 1, selected.expand(-1, -1, logits.shape[-1])),
            "pred_boxes": ref_unsig.sigmoid(),
        }
        return ref_unsig.detach(), interm

    def proposal_scores(self, logits: Tensor) -> Tensor:
        """(N, S) ranking score of every token's proposal, from its logits (N, S, K + U): channel
        0, the foreground logit, with ``binary_proposals`` (Deformable DETR's and H-DETR's
        ``topk(enc_outputs_class[..., 0])``), else the best logit over all rows, ranking-only ones
        included (DINO's, over the release's 91)."""
        return logits[..., 0] if self.binary_proposals else logits.max(-1)[0]

    def top_tokens(self, logits: Tensor, num_queries: int) -> Tensor:
        """(N, Q) indices of the tokens of the ``num_queries`` best :meth:`proposal_scores`."""
        # top-k over every token, as the released DINO / Deformable DETR: padding and border
        # tokens (zeroed memory, +inf box logits) compete too; one selected gets the box
        # (1, 1, 1, 1), which the decoder refines like any other
        return torch.topk(self.proposal_scores(logits), num_queries, dim=1)[1]

    def content_queries(self, ref_unsig: Tensor, memory: Tensor) -> Tensor:
        """Content queries of the selected proposals (every subclass's own).

        Args:
            ref_unsig: (N, Q, 4) selected proposal boxes, inverse-sigmoid, detached.
            memory: (N, S, C) encoder output (its dtype is the queries').

        Returns:
            (N, Q, C)
        """
        raise NotImplementedError(f"{type(self).__name__} must implement content_queries")

    def position_queries(self, ref_unsig: Tensor, memory: Tensor) -> Tensor | None:
        """Positional queries of the reference boxes, the same in every decoder layer, or None
        (the default) when the decoder makes them from each layer's boxes. A subclass that
        returns them sets :attr:`positional_queries` to "input".

        Args:
            ref_unsig: (N, Q, 4) reference boxes of all decoded queries, inverse-sigmoid.
            memory: (N, S, C) encoder output.

        Returns:
            (N, Q, C) or None
        """
        return None

    def select_queries(
        self, enc: Dict[str, Tensor], num_queries: int | None = None
    ) -> Tuple[Tensor, Tensor, Dict[str, Tensor]]:
        """:meth:`select_proposals` then :meth:`content_queries`.

        Returns:
            content (N, Q, C), reference boxes (N, Q, 4) inverse-sigmoid, detached, and the
            proposals' outputs for the encoder loss.
        """
        ref_unsig, interm = self.select_proposals(enc, num_queries)
        return self.content_queries(ref_unsig, enc["memory"]), ref_unsig, interm

    def decode(
        self,
        enc: Dict[str, Tensor],
        content: Tensor,
        ref_unsig: Tensor,
        attn_mask: Tensor | None = None,
    ) -> Tuple[Tensor, Tensor]:
        """Run the decoder on the encoder output of :meth:`encode`, with the positional queries
        of :meth:`position_queries`.

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
            query_pos=self.position_queries(ref_unsig, enc["memory"]),
        )

    def to_outputs(self, logits: Tensor, boxes: Tensor) -> Dict:
        """(num_layers, N, Q, *) decoder stacks -> the criterion's dict: the last layer's
        "pred_logits" / "pred_boxes" and "aux_outputs" of the earlier layers, the logits of the
        K classes only (ranking-only rows get no loss)."""
        logits = logits[..., : self.num_classes]
        return {
            "pred_logits": logits[-1],
            "pred_boxes": boxes[-1],
            "aux_outputs": [
                {"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])
            ],
        }

    def proposal_targets(self, targets: List[Dict]) -> List[Dict] | None:
        """Targets of the encoder-proposal loss: with ``binary_proposals`` every object is
        class 0 (foreground), as Deformable DETR's; otherwise None (the targets themselves)."""
        if not self.binary_proposals:
            return None
        return [{"labels": torch.zeros_like(t["labels"]), "boxes": t["boxes"]} for t in targets]

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
        if not self.training:
            sizes = requested_sizes(batched_inputs, images)
            return self.inference(self.detect(images, sizes), sizes)
        targets = self.prepare_targets(batched_inputs, images)
        enc = self.encode(*self.extract_features(images), padded=has_padding(images))
        return self.forward_training(enc, targets)

    def detect(
        self, images: ImageList, output_sizes: Sequence[Tuple[int, int]] | None = None
    ) -> List[Tuple[Tensor, Tensor, Tensor]]:
        """The inference path, on tensors only: encoder, query selection, decoder and
        :meth:`postprocess`. :meth:`forward` at inference, the export
        (:class:`lite_detr.export.InferenceDetector`) and through them the predictor and the
        tools all run it.

        Args:
            images: normalised images (:meth:`preprocess_image`, or one :meth:`normalize`-d
                image in an ``ImageList`` of its own size).
            output_sizes: (height, width) to scale each image's boxes to; default its
                ``images.image_sizes``.

        Returns:
            per image, as :meth:`postprocess`: boxes (k, 4) XYXY in pixels, scores (k,),
            labels (k,) int64.
        """
        enc = self.encode(*self.extract_features(images), padded=has_padding(images))
        content, ref_unsig, _ = self.select_queries(enc)
        logits, boxes = self.decode(enc, content, ref_unsig)
        return self.postprocess(logits[-1], boxes[-1], output_sizes or images.image_sizes)

    def forward_training(self, enc: Dict[str, Tensor], targets: List[Dict]) -> Dict[str, Tensor]:
        """Training step after the encoder: select the queries, decode, and return the weighted
        losses (suffixes "_{i}" of the auxiliary layers, "_enc" of the proposals).

        Args:
            enc: output of :meth:`encode`; targets: of :meth:`prepare_targets`.
        """
        content, ref_unsig, interm = self.select_queries(enc)
        logits, boxes = self.decode(enc, content, ref_unsig)
        outputs = self.to_outputs(logits, boxes)
        outputs["interm_outputs"] = interm
        return self.criterion(outputs, targets, interm_targets=self.proposal_targets(targets))

    def prepare_targets(self, batched_inputs: List[Dict], images: ImageList) -> List[Dict]:
        """Ground truth as normalised cxcywh boxes of the unpadded image, int64 labels."""
        targets = []
        for i, x in enumerate(batched_inputs):
            if "instances" not in x:
                raise ValueError(
                    f"{type(self).__name__}: training needs batched_inputs[{i}]['instances'] "
                    "with gt_boxes and gt_classes"
                )
            # checked as given, before the copy to the device: data loaders give CPU instances,
            # so the check reads no device memory (on the device it would synchronise each step)
            classes = x["instances"].gt_classes
            if len(classes) and (classes.min() < 0 or classes.max() >= self.num_classes):
                raise ValueError(
                    f"{type(self).__name__}: gt_classes of image {i} must be in "
                    f"[0, {self.num_classes}), got values {classes.unique().tolist()}"
                )
            inst = x["instances"].to(self.device)
            h, w = images.image_sizes[i]
            scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=self.device)
            labels = inst.gt_classes.to(torch.int64)
            boxes = box_xyxy_to_cxcywh(inst.gt_boxes.tensor.float() / scale)
            targets.append({"labels": labels, "boxes": boxes})
        return targets

    def select_detections(self, logits: Tensor, boxes: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """The ``select_box_nums_for_evaluation`` best (query, class) pairs of each image, over
        all K + U rows (:meth:`real_detections` then drops those of the U ranking-only rows).

        Args:
            logits: (N, Q, K + U) last decoder layer; boxes: (N, Q, 4) normalised cxcywh.

        Returns:
            scores (N, k) descending, labels (N, k) int64, boxes (N, k, 4) normalised xyxy.
        """
        n, q, k = logits.shape
        num = min(self.select_box_nums_for_evaluation, q * k)
        scores, idx = torch.topk(logits.sigmoid().view(n, -1), num, dim=1)
        labels = idx % k
        boxes = torch.gather(boxes, 1, (idx // k)[..., None].expand(-1, -1, 4))
        return scores, labels, box_cxcywh_to_xyxy(boxes)

    def real_detections(
        self, scores: Tensor, labels: Tensor, boxes: Tensor
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """One image's detections of :meth:`select_detections` without those of the ranking-only
        rows (labels >= K): the release keeps them in its top-k, COCO evaluation ignores them.

        Args:
            scores (k,), labels (k,), boxes (k, 4).

        Returns:
            the same, of the k' <= k detections of the K classes, in the same order.
        """
        if not self.num_ranking_only_classes:
            return scores, labels, boxes
        keep = labels < self.num_classes
        return scores[keep], labels[keep], boxes[keep]

    def postprocess(
        self, logits: Tensor, boxes: Tensor, output_sizes: Sequence[Tuple[int, int]]
    ) -> List[Tuple[Tensor, Tensor, Tensor]]:
        """Top-k (query, class) pairs per image, boxes in the output size.

        As the released DINO's post-processing: sigmoid scores, top-k over all (query, class)
        pairs (:meth:`select_detections`; the ranking-only rows' detections dropped after it,
        :meth:`real_detections`), normalised boxes scaled straight to the output size; no NMS, no
        clipping to the image and no removal of empty boxes (detectron2's
        ``detector_postprocess`` would do both).

        Args:
            logits: (N, Q, K + U) and boxes: (N, Q, 4) normalised cxcywh, of the last layer.
            output_sizes: N (height, width).

        Returns:
            per image: boxes (k, 4) XYXY in pixels of its output size, scores (k,), labels (k,).
        """
        scores, labels, boxes = self.select_detections(logits, boxes)
        results = []
        for i, (height, width) in enumerate(output_sizes):
            kept_scores, kept_labels, kept_boxes = self.real_detections(
                scores[i], labels[i], boxes[i]
            )
            scale = torch.tensor([width, height, width, height], dtype=boxes.dtype)
            results.append((kept_boxes * scale.to(boxes.device), kept_scores, kept_labels))
        return results

    def inference(
        self,
        detections: List[Tuple[Tensor, Tensor, Tensor]],
        output_sizes: Sequence[Tuple[int, int]],
    ) -> List[Dict[str, Instances]]:
        """:meth:`detect`'s detections as detectron2's outputs: {"instances": Instances} with
        pred_boxes, scores, pred_classes, per image of the (height, width) ``output_sizes``."""
        results = []
        for (boxes, scores, labels), size in zip(detections, output_sizes):
            r = Instances(tuple(size))
            r.pred_boxes = Boxes(boxes)
            r.scores = scores
            r.pred_classes = labels
            results.append({"instances": r})
        return results
