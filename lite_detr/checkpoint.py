"""Checkpointer that refuses weights of another encoder variant."""

import logging

from detectron2.checkpoint import DetectionCheckpointer

from lite_detr.modeling.meta_arch.dino import VariantTag

__all__ = ["LiteDetrCheckpointer"]

logger = logging.getLogger(__name__)

_TAG_SUFFIX = "._extra_state"
# keys of the authors' DINO-codebase checkpoints (the released Lite-DINO), which need conversion
_RELEASE_PREFIXES = tuple(
    p + k for p in ("", "module.") for k in ("transformer.encoder.", "backbone.0.body.")
)


class LiteDetrCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that checks the architecture tag of a detector checkpoint.

    Models of this project carry a :class:`~lite_detr.modeling.meta_arch.dino.VariantTag`
    (encoder variant such as ``"H3L1-(2+1)x3/key_aware"`` and decoder cross-attention type) that is
    saved with the weights. Before loading, a checkpoint whose tag differs from the model's raises
    ``ValueError`` naming both, instead of detectron2's default of loading what matches (an H2L2
    checkpoint has the same parameter names and shapes as an H3L1 model: it would load silently
    and give near-zero AP). Checkpoints without a tag (ImageNet backbones, converted weights)
    load as usual; a warning is logged when such a checkpoint holds encoder weights.
    """

    def _load_model(self, checkpoint):
        state = checkpoint.get("model", {})
        release = next((k for k in state if k.startswith(_RELEASE_PREFIXES)), None)
        if release is not None:
            raise ValueError(
                f"the checkpoint is in the layout of the authors' DINO / Lite-DINO release (key "
                f"{release!r}): convert it first with python tools/convert_lite_detr_checkpoint.py "
                "INPUT.pth OUTPUT.pth"
            )
        for name, tag in self.model.named_modules():
            if not isinstance(tag, VariantTag):
                continue
            key = _find_key(state, name + _TAG_SUFFIX)
            if key is not None:
                tag.check(state[key])  # raises ValueError on a mismatch
            elif any(k.startswith(("encoder.", "module.encoder.")) for k in state):
                logger.warning(
                    "The checkpoint has encoder weights but no variant tag: cannot verify that it "
                    f"matches this model's {tag.tags}."
                )
        return super()._load_model(checkpoint)


def _find_key(state, key):
    """``key`` in ``state``, allowing for a DDP ``module.`` prefix on either side."""
    plain = key[len("module.") :] if key.startswith("module.") else key
    for candidate in (key, plain, "module." + plain):
        if candidate in state:
            return candidate
    return None
