"""
Checkpointer that writes atomically, resumes from the newest intact checkpoint and refuses
weights of another encoder variant (the model's
:class:`~lite_detr.modeling.variant_tag.VariantTag`) or, when resuming, of another model.
"""

import logging
import os
import re
from collections.abc import Mapping
from typing import List, Tuple

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from torch.nn.parallel import DistributedDataParallel

from lite_detr.modeling.variant_tag import VariantMismatchError, VariantTag
from lite_detr.utils import atomic_write, remove_stale_temporaries

__all__ = ["CheckpointError", "LiteDetrCheckpointer", "VariantMismatchError", "VariantTag"]

logger = logging.getLogger(__name__)

_TAG_SUFFIX = "._extra_state"
# keys of the authors' DINO-codebase checkpoints (the released Lite-DINO), which need conversion
_RELEASE_PREFIXES = tuple(
    p + k for p in ("", "module.") for k in ("transformer.encoder.", "backbone.0.body.")
)
_LAST = "last_checkpoint"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the fix."""


class LiteDetrCheckpointer(DetectionCheckpointer):
    """
    ``DetectionCheckpointer`` for this project's training runs.

    * **Atomic saves**: a checkpoint goes to a temporary file that is flushed and renamed into
      place, and ``last_checkpoint`` moves to it only after that, so a run killed while saving
      leaves the previous checkpoint and its ``last_checkpoint`` intact; the temporary files
      of such a save are removed by the next save or ``--resume``.
    * **Verified resume**: :meth:`resume_or_load` with ``resume=True`` reads the checkpoint that
      ``last_checkpoint`` names; if it is missing, truncated or not a checkpoint, it warns (naming
      both files) and resumes from the newest intact ``model_*.pth`` of the folder instead. A
      resumed checkpoint must match the model exactly (names and shapes): resuming with another
      model would load part of it and fail later inside the optimizer.
      A checkpoint of another encoder variant is refused naming that file.
    * **Variant tag**: models of this project carry a :class:`VariantTag` (encoder variant such
      as ``"H3L1-(2+1)x3/key_aware"`` and decoder cross-attention type) that is saved with the
      weights. A checkpoint whose tag differs from the model's raises
      :class:`VariantMismatchError` naming both, instead of detectron2's default of loading what
      matches (an H2L2 checkpoint has the same parameter names and shapes as an H3L1 model: it
      would load silently and give other outputs). Checkpoints without a tag (ImageNet backbones,
      converted weights) load as usual; a warning is logged when such a checkpoint holds encoder
      weights.

    Files that are not checkpoints (text, images, ``.npy``, a bare tensor, ...) or that need
    conversion (the authors' release) raise :class:`CheckpointError` naming the file that was
    read.
    """

    def __init__(self, model, save_dir: str = "", *, save_to_disk=None, **checkpointables):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.resumed_from: str | None = None  # the file --resume loaded, if any
        self._preloaded: Tuple[str, dict] | None = None
        self._strict = False

    # -- saving ----------------------------------------------------------------------------------

    def save(self, name: str, **kwargs) -> None:
        """As fvcore's ``Checkpointer.save``, written atomically."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        remove_stale_temporaries(self.save_dir)  # leftovers of a run killed while saving
        self.logger.info(f"Saving checkpoint to {path}")
        with atomic_write(path, "wb") as f:
            torch.save(data, f)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        with atomic_write(os.path.join(self.save_dir, _LAST)) as f:
            f.write(last_filename_basename)

    # -- loading ---------------------------------------------------------------------------------

    def load(self, path: str, *args, **kwargs):
        """As ``DetectionCheckpointer.load``; a local ``path`` that does not exist raises
        :class:`CheckpointError` (fvcore asserts). A DDP model is left to detectron2, which
        checks on every rank whether the main one has the file."""
        local = path and "://" not in path
        if local and not isinstance(self.model, DistributedDataParallel):
            if not os.path.isfile(path):
                raise CheckpointError(
                    f"Checkpoint {path!r} does not exist: pass the path of an existing .pth file."
                )
        return super().load(path, *args, **kwargs)

    def resume_or_load(self, path: str, *, resume: bool = True):
        """
        With ``resume``, load everything (model and checkpointables) from the newest intact
        checkpoint of ``save_dir`` (see the class docstring); ``resumed_from`` names it. Without
        one, or without ``resume``, load only the model weights from ``path``.
        """
        self.resumed_from = None
        if resume and self.save_to_disk:
            remove_stale_temporaries(self.save_dir)  # leftovers of a run killed while saving
        found = self._newest_intact_checkpoint() if resume else None
        if found is None:
            return self.load(path, checkpointables=[])
        self._preloaded, self._strict = found, True
        try:
            ret = self.load(found[0])
        except VariantMismatchError as e:  # which names the variants, not the file
            raise CheckpointError(
                f"Cannot resume from {found[0]}: {e}. --resume continues a run with the config "
                f"that wrote it (see {os.path.join(self.save_dir, 'config.yaml')})."
            ) from e
        finally:
            self._preloaded, self._strict = None, False
        self.resumed_from = found[0]
        return ret

    def read_iteration(self, path: str):
        """The training iteration saved in the checkpoint ``path`` (None if it has none); raises
        :class:`CheckpointError` for a file that is not a readable checkpoint."""
        return self._load_file(path).get("iteration")

    def _resume_candidates(self) -> Tuple[List[str], List[str]]:
        """The checkpoint files to try, best first, and notes on a bad ``last_checkpoint``."""
        notes = []
        tagged = ""
        if os.path.isfile(os.path.join(self.save_dir, _LAST)):
            try:
                tagged = self.get_checkpoint_file()
            except (OSError, UnicodeDecodeError) as e:
                notes.append(f"{os.path.join(self.save_dir, _LAST)} is unreadable ({e})")
            if tagged and not os.path.isfile(tagged):
                notes.append(
                    f"{os.path.join(self.save_dir, _LAST)} names {tagged}, which is missing"
                )
                tagged = ""
            elif not tagged and not notes:
                notes.append(f"{os.path.join(self.save_dir, _LAST)} is empty")
        pattern = re.compile(r"^model_(\d+|final)\.pth$")
        try:
            names = [n for n in os.listdir(self.save_dir) if pattern.match(n)]
        except OSError:
            names = []
        others = [os.path.join(self.save_dir, n) for n in names]
        others = [p for p in others if p != tagged and os.path.isfile(p)]
        others.sort(key=lambda p: (os.path.getmtime(p), p), reverse=True)  # newest first
        return ([tagged] if tagged else []) + others, notes

    def _newest_intact_checkpoint(self) -> Tuple[str, dict] | None:
        candidates, notes = self._resume_candidates()
        if not candidates:
            if notes:
                raise CheckpointError(
                    f"Cannot resume: {notes[0]} and {self.save_dir} holds no model_*.pth. "
                    "Run without --resume to start over."
                )
            return None
        for path in candidates:
            try:
                data = self._load_file(path)
                if "iteration" not in data:
                    raise CheckpointError(
                        f"{path} has no training iteration: not a run's checkpoint"
                    )
            except CheckpointError as e:
                notes.append(str(e))
                continue
            for note in notes:
                self.logger.warning(f"--resume: {note}; resuming from {path} instead.")
            return path, data
        raise CheckpointError(
            f"Cannot resume: no intact checkpoint in {self.save_dir} ({'; '.join(notes)}). "
            "Run without --resume to start over, or restore a checkpoint file."
        )

    def _load_file(self, filename: str):
        if self._preloaded is not None and self._preloaded[0] == filename:
            return self._preloaded[1]
        native = not filename.endswith((".pkl", ".pyth"))
        try:
            if native:  # as DetectionCheckpointer, with the structure checked before use
                loaded = torch.load(filename, map_location="cpu")
            else:
                loaded = super()._load_file(filename)
        except Exception as e:  # torch.load / pickle raise many types for a non-checkpoint
            raise CheckpointError(
                f"{filename} is not a readable checkpoint ({_reason(filename, e)}): pass a .pth "
                "file written by train_net.py or torch.save({'model': state_dict})."
            ) from e
        if native and isinstance(loaded, Mapping) and "model" not in loaded:
            loaded = {"model": loaded}
        _check_structure(filename, loaded)
        release = next((k for k in loaded["model"] if k.startswith(_RELEASE_PREFIXES)), None)
        if release is not None:
            raise CheckpointError(
                f"{filename} is in the layout of the authors' DINO / Lite-DINO release (key "
                f"{release!r}): convert it first with python tools/convert_lite_detr_checkpoint.py "
                "INPUT.pth OUTPUT.pth"
            )
        if native:
            loaded["matching_heuristics"] = True
        return loaded

    def _load_model(self, checkpoint):
        state = checkpoint.get("model", {})
        for name, tag in self.model.named_modules():
            if not isinstance(tag, VariantTag):
                continue
            key = _find_key(state, name + _TAG_SUFFIX)
            if key is not None:
                tag.check(state[key])  # raises VariantMismatchError
            elif any(k.startswith(("encoder.", "module.encoder.")) for k in state):
                logger.warning(
                    "The checkpoint has encoder weights but no variant tag: cannot verify that it "
                    f"matches this model's {tag.tags}."
                )
        if self._strict:
            self._check_same_model(self._preloaded[0], state)
            self._check_optimizer_fits(self._preloaded[0], checkpoint.get("optimizer"))
        return super()._load_model(checkpoint)

    def _check_same_model(self, path: str, state: Mapping) -> None:
        theirs = {
            (k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()
        }
        ours = self.model.state_dict()
        problems = [
            f"{k}: {tuple(theirs[k].shape)} in the checkpoint, {tuple(v.shape)} in the model"
            for k, v in ours.items()
            if k in theirs
            and hasattr(theirs[k], "shape")
            and hasattr(v, "shape")
            and tuple(theirs[k].shape) != tuple(v.shape)
        ]
        problems += [f"{k} missing from the checkpoint" for k in ours if k not in theirs]
        problems += [f"{k} not in the model" for k in theirs if k not in ours]
        if problems:
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise CheckpointError(
                f"Cannot resume from {path}: it was written by another model ("
                + "; ".join(problems[:3])
                + f"{more}). --resume continues a run with the config that wrote it (see "
                f"{os.path.join(self.save_dir, 'config.yaml')}); to start from these weights "
                "with another model, pass train.init_checkpoint=... with a new train.output_dir."
            )

    def _check_optimizer_fits(self, path: str, saved) -> None:
        """The saved optimizer state holds per-parameter tensors (AdamW's moments) by position;
        torch's ``load_state_dict`` checks only the group lengths, so a model whose parameters
        come in another order would resume with moments of other parameters and fail at the
        first step. Refuse it here, naming the first misfit."""
        optimizer = self.checkpointables.get("optimizer")
        if optimizer is None or not isinstance(saved, Mapping):
            return
        params = [p for group in optimizer.param_groups for p in group["params"]]
        for index, state in saved.get("state", {}).items():
            if not isinstance(index, int) or index >= len(params):
                continue
            for key, value in state.items():
                shape = tuple(params[index].shape)
                if torch.is_tensor(value) and value.dim() and tuple(value.shape) != shape:
                    raise CheckpointError(
                        f"Cannot resume from {path}: its optimizer state does not fit this "
                        f"model's parameters (parameter {index}: {key} of shape "
                        f"{tuple(value.shape)}, the parameter is {shape}): the parameters come "
                        "in another order than in the run that wrote it. Start the run over, or "
                        "pass its weights as train.init_checkpoint=... with a new "
                        "train.output_dir."
                    )


_MAGIC = {
    b"\xff\xd8\xff": "a JPEG image",
    b"\x89PNG": "a PNG image",
    b"\x93NUMPY": "a NumPy .npy array",
    b"PK\x03\x04": "a damaged or truncated PyTorch file",
}


def _reason(filename: str, e: BaseException) -> str:
    """What ``filename`` is, as far as its first bytes tell, and why it cannot be loaded."""
    try:
        size = os.path.getsize(filename)
        with open(filename, "rb") as f:
            head = f.read(512)
    except OSError as err:
        return f"{type(err).__name__}: {err}"
    if size == 0:
        return "the file is empty"
    what = next((name for magic, name in _MAGIC.items() if head.startswith(magic)), None)
    if what is None:
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError:
            text = ""
        if text and all(c.isprintable() or c.isspace() for c in text):
            what = "a text file"
    detail = str(e).strip().splitlines()[0][:150] if str(e).strip() else type(e).__name__
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
    if found:  # a complete file, refused by torch.load(weights_only=True)
        return (
            f"a PyTorch file that holds Python objects besides tensors ({found.group(1)}); a "
            "checkpoint of the authors' release must be converted first: python "
            "tools/convert_lite_detr_checkpoint.py INPUT.pth OUTPUT.pth"
        )
    if what is None:
        return f"unknown content, {size} bytes; torch.load: {detail}"
    if what.startswith("a damaged"):
        return f"{what}, {size} bytes; torch.load: {detail}"
    return f"{what}, {size} bytes"


def _check_structure(filename: str, loaded) -> None:
    if not isinstance(loaded, Mapping):
        raise CheckpointError(
            f"{filename} holds a {type(loaded).__name__}, not a checkpoint: pass a .pth file of a "
            "dict {'model': state_dict, ...} (as train_net.py and torch.save(model.state_dict()) "
            "write)."
        )
    model = loaded.get("model")
    bad = None
    if not isinstance(model, Mapping):
        bad = f"its 'model' entry is a {type(model).__name__}, not a state dict"
    else:
        for k, v in model.items():
            if not isinstance(k, str) or not isinstance(v, (torch.Tensor, np.ndarray)):
                bad = f"its 'model' entry maps {k!r} to a {type(v).__name__}, not a tensor"
                break
    if bad:
        raise CheckpointError(
            f"{filename} is not a model checkpoint: {bad}. Pass a .pth file of "
            "{'model': state_dict, ...} or a plain state dict."
        )


def _find_key(state, key):
    """``key`` in ``state``, allowing for a DDP ``module.`` prefix on either side."""
    plain = key[len("module.") :] if key.startswith("module.") else key
    for candidate in (key, plain, "module." + plain):
        if candidate in state:
            return candidate
    return None
