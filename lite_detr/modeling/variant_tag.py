"""The architecture strings a detector saves with its weights (:class:`VariantTag`), so that
weights of one variant never load silently into another. Part of the model (its state dict and
``load_state_dict``); the checkpointer reads it, never the other way round."""

import json
from typing import Dict

import torch
from torch import Tensor, nn

__all__ = ["VariantMismatchError", "VariantTag"]


class VariantMismatchError(ValueError):
    """Weights of another architecture variant (:meth:`VariantTag.check`), raised by
    ``model.load_state_dict``. The message names both variants, not the file, which the model
    does not know: the checkpointer and the config checks add it."""


class VariantTag(nn.Module):
    """Architecture strings kept in the state dict, so that weights of one variant never load
    silently into another (e.g. an H2L2 checkpoint into an H3L1 model: same parameter names and
    shapes, other outputs).

    The tags are stored as the module's ``_extra_state`` (a uint8 tensor of JSON, so that
    detectron2's checkpointer can handle it); :meth:`set_extra_state` raises
    :class:`VariantMismatchError` on a mismatch, which makes a plain ``model.load_state_dict``
    fail too.
    """

    # human-readable names used in error messages
    _NAMES = {
        "encoder": "encoder variant",
        "decoder": "decoder cross-attention",
        "ranking_only_classes": "ranking-only class rows (model.num_ranking_only_classes)",
    }

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
        """Raise :class:`VariantMismatchError` naming both variants if ``state`` (a saved tag)
        differs from ours."""
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
            raise VariantMismatchError(
                "; ".join(problems) + " (load weights of the same variant, or change the config)"
            )

    def set_extra_state(self, state: Tensor) -> None:
        self.check(state)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.tags.items())
