"""
A training data loader whose position is part of the checkpoint, for exact resume.

detectron2's ``build_detection_train_loader`` restarts its sampler's permutation on every start
and draws augmentations from the workers' global RNGs, so a resumed run repeats the first batches
and sees other augmentations than the uninterrupted run. Here every sample of the stream is a
pure function of ``(seed, position)``: the order (a fresh permutation of the dataset per epoch)
and the augmentation (the mapper runs with Python/NumPy/torch RNGs seeded from the sample's
position). The loader's state is the next position and the samples waiting in the
aspect-ratio buckets; restoring it continues the stream exactly where it stopped, with any
number of workers.
"""

import itertools
import logging
import sys
from typing import Callable, Dict, List

import numpy as np
import torch
from detectron2.data.common import DatasetFromList
from detectron2.utils import comm
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from lite_detr.utils import preserved_rng_states

from .datasets.coco_check import DatasetError

__all__ = ["ResumableTrainLoader"]

logger = logging.getLogger(__name__)

# with train.skip_bad_images, this many unreadable images for one sample stop the run: the
# dataset is gone rather than damaged
_MAX_SKIPS_IN_A_ROW = 100


class _QuietWhenConsumerLeaves:
    """``sys.excepthook`` of a loader worker: a broken pipe or reset connection is not shown.

    A worker hands each batch's tensors to the main process through file descriptors served by
    a thread (``multiprocessing.resource_sharer``) that reports any failure through
    ``sys.excepthook``. When the main process stops mid-transfer (Ctrl-C, SIGTERM), that thread
    prints a traceback for a transfer nobody wants any more: ``BrokenPipeError`` or
    ``ConnectionResetError`` while it sends, ``EOFError`` when the main process connected and left
    before asking for its descriptor. The main process reports the interruption itself.
    """

    def __init__(self, hook):
        self.hook = hook

    def __call__(self, exc_type, exc, tb):
        if not issubclass(exc_type, (BrokenPipeError, ConnectionResetError, EOFError)):
            self.hook(exc_type, exc, tb)


def _init_worker(_worker_id: int) -> None:
    sys.excepthook = _QuietWhenConsumerLeaves(sys.excepthook)


def _seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class _SampleStream(IterableDataset):
    """Yields ``(position, mapped sample, unreadable images)`` for ``replay`` positions, then
    ``start, start+1, ...``; worker ``w`` of ``n`` maps every n-th of them (the DataLoader
    interleaves them in order).

    An image that the mapper cannot read (``OSError``) is listed as ``(file name, message)``;
    with ``skip_bad_images`` another item takes its place (as for a mapper that returns None),
    otherwise the sample is None. The main process reports it: an exception raised in a worker
    would carry the worker's traceback."""

    def __init__(
        self, items, mapper, seed: int, rank: int, world: int, replay, start: int, skip: bool
    ):
        self.items, self.mapper, self.seed = items, mapper, seed
        self.rank, self.world = rank, world
        self.replay, self.start = list(replay), start
        self.skip = skip
        self._perms: Dict[int, np.ndarray] = {}

    def _index(self, g: int) -> int:
        epoch, offset = divmod(g, len(self.items))
        if epoch not in self._perms:
            self._perms = {
                epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self.items))
            }
        return int(self._perms[epoch][offset])

    def _map(self, pos: int):
        g = pos * self.world + self.rank  # position in the stream shared by all ranks
        index = self._index(g)
        unreadable = []
        for attempt in itertools.count():
            _seed_everything(
                int(np.random.SeedSequence([self.seed, g, attempt]).generate_state(1)[0])
            )
            item = self.items[index]
            try:
                out = self.mapper(item) if self.mapper is not None else item
            except OSError as e:  # e.g. the image was deleted or damaged during training
                cause = e.__cause__ or e  # DetrDatasetMapper's OSError wraps the reader's
                problem = f"{type(cause).__name__}: {cause}"
                unreadable.append((item.get("file_name", f"dataset item {index}"), problem))
                if not self.skip or len(unreadable) >= _MAX_SKIPS_IN_A_ROW:
                    return None, unreadable
                out = None
            else:
                if out is None and (attempt == 0 or attempt % 100 == 0):
                    logger.warning(
                        f"The mapper returned None for dataset item {index}: trying another."
                    )
            if out is not None:
                return out, unreadable
            index = int(np.random.default_rng([self.seed, g, attempt]).integers(len(self.items)))

    def __iter__(self):
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        positions = itertools.chain(self.replay, itertools.count(self.start))
        for i, pos in enumerate(positions):
            if i % num_workers != worker:
                continue
            if info is None:  # in the training process: leave its RNG streams untouched
                with preserved_rng_states():
                    yield (pos, *self._map(pos))
            else:
                yield (pos, *self._map(pos))


class ResumableTrainLoader:
    """
    Infinite iterable of training batches (lists of mapped dataset dicts), like detectron2's
    ``build_detection_train_loader`` (same arguments, same aspect-ratio grouping), with
    ``state_dict`` / ``load_state_dict`` that save and restore its position.

    The stream is shared by all ranks: rank ``r`` of ``W`` takes global positions ``r, r+W, ...``.

    Args:
        dataset (list[dict] or Dataset): the dataset dicts.
        mapper (callable): maps a dataset dict to the model's input dict (None: identity).
        total_batch_size (int): images per iteration over all ranks.
        seed (int, optional): data order and augmentation seed, the same on every rank
            (None: a random one shared by the ranks).
        aspect_ratio_grouping (bool): batch landscape and portrait images separately.
        num_workers (int): data loader worker processes.
        collate_fn (callable, optional): applied to each batch list.
        skip_bad_images (bool): an image that the mapper cannot read (``OSError``: deleted,
            damaged) is skipped with a warning and counted (``skipped_images``); without it,
            iteration raises :class:`~lite_detr.data.DatasetError` naming the file.
    """

    def __init__(
        self,
        dataset,
        mapper: Callable | None,
        total_batch_size: int,
        *,
        seed: int | None = None,
        aspect_ratio_grouping: bool = True,
        num_workers: int = 0,
        collate_fn: Callable | None = None,
        skip_bad_images: bool = False,
    ):
        self.world, self.rank = comm.get_world_size(), comm.get_rank()
        if total_batch_size <= 0 or total_batch_size % self.world != 0:
            raise ValueError(
                f"total_batch_size={total_batch_size} must be a positive multiple of the number "
                f"of processes ({self.world})."
            )
        self.batch_size = total_batch_size // self.world
        self.items = DatasetFromList(dataset, copy=False) if isinstance(dataset, list) else dataset
        if len(self.items) == 0:
            raise ValueError("The training dataset is empty.")
        self.mapper = mapper
        self.seed = int(seed) if seed is not None else int(comm.shared_random_seed())
        self.aspect_ratio_grouping = aspect_ratio_grouping
        self.num_workers = num_workers
        self.collate_fn = collate_fn
        self.skip_bad_images = skip_bad_images
        self.skipped_images = 0  # unreadable images skipped since the run began (checkpointed)
        self._next = 0  # next position (of this rank's stream) not yet taken from the stream
        self._pending: List[List[int]] = [[], []]  # positions waiting in each bucket

    @property
    def num_images(self) -> int:
        """Images in the dataset, i.e. in one pass of the stream (an epoch)."""
        return len(self.items)

    def state_dict(self) -> Dict:
        return {
            "seed": self.seed,
            "next_position": self._next,
            "pending": [list(b) for b in self._pending],
            "skipped_images": self.skipped_images,
        }

    def load_state_dict(self, state: Dict) -> None:
        """Continue from ``state`` (takes effect when iteration starts)."""
        self.seed = int(state["seed"])
        self._next = int(state["next_position"])
        self._pending = [list(b) for b in state["pending"]]
        self.skipped_images = int(state.get("skipped_images", 0))

    def __iter__(self):
        replay = [p for bucket in self._pending for p in bucket]
        stream = _SampleStream(
            self.items,
            self.mapper,
            self.seed,
            self.rank,
            self.world,
            replay,
            self._next,
            self.skip_bad_images,
        )
        loader = DataLoader(
            stream,
            batch_size=None,
            num_workers=self.num_workers,
            worker_init_fn=_init_worker,
            generator=torch.Generator().manual_seed(0),  # do not draw from the global RNG
        )
        buckets: List[List] = [[], []]
        for pos, d, unreadable in loader:
            self._report(unreadable, stopped=d is None)
            self._next = max(self._next, pos + 1)
            b = int(d["width"] > d["height"]) if self.aspect_ratio_grouping else 0
            buckets[b].append((pos, d))
            if len(buckets[b]) == self.batch_size:
                batch = [x for _, x in buckets[b]]
                buckets[b] = []
                self._pending = [[p for p, _ in bucket] for bucket in buckets]
                yield self.collate_fn(batch) if self.collate_fn is not None else batch

    def _report(self, unreadable, stopped: bool) -> None:
        if stopped:
            file_name, problem = unreadable[-1]
            more = f" ({len(unreadable)} unreadable images in a row)" if len(unreadable) > 1 else ""
            raise DatasetError(
                f"Cannot read image {file_name!r} during training ({problem}){more}: restore the "
                "file or remove it from the dataset, or set train.skip_bad_images=True to skip "
                "unreadable images. The checkpoints written so far are intact: continue with "
                "--resume."
            )
        for file_name, problem in unreadable:
            self.skipped_images += 1
            logger.warning(
                f"Skipped unreadable image {file_name!r} ({problem}); {self.skipped_images} "
                "skipped so far (train.skip_bad_images=True)."
            )
