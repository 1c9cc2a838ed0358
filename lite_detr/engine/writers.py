"""Event writers and logging setup for clean, machine-readable training output."""

import json
import logging
import math
import os
import re
import sys
from typing import List

from detectron2.engine import hooks
from detectron2.utils.events import (
    CommonMetricPrinter,
    EventWriter,
    JSONWriter,
    TensorboardXWriter,
)

from lite_detr.utils import atomic_write

__all__ = [
    "MetricsWriter",
    "ResumableTensorboardWriter",
    "StrictJSONWriter",
    "build_writers",
    "plain_log_files",
    "trim_metrics",
]

logger = logging.getLogger("detectron2")

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _finite_or_none(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


class _StrictJSONLines:
    """File proxy: each JSON line written has NaN / inf replaced by null (valid JSON)."""

    def __init__(self, handle):
        self._handle = handle

    def write(self, text: str) -> int:
        lines = []
        for line in text.splitlines(keepends=True):
            if line.strip():
                record = {k: _finite_or_none(v) for k, v in json.loads(line).items()}
                line = json.dumps(record, sort_keys=True, allow_nan=False) + "\n"
            lines.append(line)
        return self._handle.write("".join(lines))

    def __getattr__(self, name):  # flush, fileno, close
        return getattr(self._handle, name)


class StrictJSONWriter(JSONWriter):
    """detectron2's ``JSONWriter`` whose ``metrics.json`` is valid JSON: a non-finite value
    (e.g. the AP of an object size the dataset has no boxes of) is written as ``null``. A run
    that starts at ``start_iter`` writes nothing of earlier iterations (the history that a
    resumed trainer restores is in the file already)."""

    def __init__(self, json_file: str, window_size: int = 20, start_iter: int = 0):
        super().__init__(json_file, window_size)
        self._file_handle = _StrictJSONLines(self._file_handle)
        self._last_write = start_iter - 1


class ResumableTensorboardWriter(TensorboardXWriter):
    """detectron2's ``TensorboardXWriter`` for a run that starts at ``start_iter``.

    Its event file (a new one per start) begins with TensorBoard's purge marker at
    ``start_iter`` (``SummaryWriter(purge_step=...)``): TensorBoard hides the events of earlier
    files from that step on, i.e. those an interrupted attempt logged after the checkpoint that
    this run resumed. :meth:`flush` puts the queued events on disk (before each checkpoint)."""

    def __init__(self, log_dir: str, start_iter: int = 0, window_size: int = 20):
        super().__init__(log_dir, window_size, purge_step=start_iter)
        self._last_write = start_iter - 1

    def flush(self) -> None:
        self._writer.flush()


class MetricsWriter(hooks.PeriodicWriter):
    """
    detectron2's ``PeriodicWriter`` (console, ``metrics.json``, TensorBoard) whose files equal
    those of an uninterrupted run after any number of kills and ``--resume``.

    * The writers are made in ``before_train``: ``metrics.json`` first loses the lines of the
      iterations from ``start_iter`` on (:func:`trim_metrics`), which an interrupted attempt
      logged after the checkpoint that this run resumed, and the TensorBoard file starts with a
      purge marker at ``start_iter`` (:class:`ResumableTensorboardWriter`).
    * Besides every ``period`` iterations and the last one, the writers write (and flush) at
      every checkpoint iteration; this hook must run before the checkpointer, so that each
      checkpoint is saved after the metrics up to its iteration are on disk.
    * The first iteration of a run is printed at once instead of after ``period`` iterations;
      a resumed run prints it to the console only (``metrics.json`` keeps its schedule).

    The smoothed values (medians over 20 iterations) match too: the trainer's checkpoints carry
    the recent history of every scalar (``LiteDetrTrainer``).
    """

    def __init__(self, output_dir: str, max_iter: int, period: int, checkpoint_period: int):
        super().__init__([], period=period)
        self.output_dir, self.max_iter = output_dir, max_iter
        self.checkpoint_period = checkpoint_period

    def before_train(self):
        start = self.trainer.start_iter
        trim_metrics(os.path.join(self.output_dir, "metrics.json"), start)
        self._writers = build_writers(self.output_dir, self.max_iter, start_iter=start)

    def after_step(self):
        it = self.trainer.iter
        if (it + 1) % self.checkpoint_period == 0 or it == self.max_iter - 1:
            for writer in self._writers:
                writer.write()
                if hasattr(writer, "flush"):
                    writer.flush()
        elif (it + 1) % self._period == 0:
            for writer in self._writers:
                writer.write()
        elif it == self.trainer.start_iter:
            first = self._writers if it == 0 else self._writers[:1]  # the console printer
            for writer in first:
                writer.write()


def trim_metrics(path: str, start_iter: int) -> None:
    """
    Drop the lines of ``metrics.json`` for iterations ``start_iter`` and later (and a line cut
    off by a kill): a run that starts at ``start_iter`` logs them again. This includes the
    evaluation line of a finished run (logged at ``max_iter``), which a resumed finished run
    logs again, and, at 0, every line of an attempt killed before its first checkpoint.
    """
    if not os.path.isfile(path):
        return
    with open(path) as f:
        lines = f.readlines()
    keep = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("iteration", start_iter) < start_iter:
            keep.append(line if line.endswith("\n") else line + "\n")
    if len(keep) != len(lines):
        with atomic_write(path) as f:
            f.writelines(keep)
        logger.info(
            f"{path}: removed {len(lines) - len(keep)} line(s) of iterations >= {start_iter}, "
            "logged by an interrupted or finished attempt; this run logs them again."
        )


def build_writers(output_dir: str, max_iter: int, start_iter: int = 0) -> List[EventWriter]:
    """detectron2's ``default_writers`` with :class:`StrictJSONWriter` and
    :class:`ResumableTensorboardWriter`, for a run that starts at ``start_iter``."""
    os.makedirs(output_dir, exist_ok=True)
    return [
        CommonMetricPrinter(max_iter),
        StrictJSONWriter(os.path.join(output_dir, "metrics.json"), start_iter=start_iter),
        ResumableTensorboardWriter(output_dir, start_iter),
    ]


class _PlainFormatter(logging.Formatter):
    def __init__(self, inner: logging.Formatter):
        super().__init__()
        self._inner = inner

    def format(self, record):
        return _ANSI.sub("", self._inner.format(record))


def plain_log_files(output_dir: str) -> None:
    """
    Call before detectron2's ``default_setup``: its log files (``output_dir/log.txt``) get no
    ANSI colour codes (it logs the config syntax-highlighted); the console keeps its colours.

    The loggers are set up here with the arguments ``default_setup`` uses, so its own
    (cached) ``setup_logger`` calls return these handlers.
    """
    from detectron2.utils import comm
    from detectron2.utils.logger import setup_logger

    rank = comm.get_rank()
    for lg in (
        setup_logger(output_dir, distributed_rank=rank, name="fvcore"),
        setup_logger(output_dir, distributed_rank=rank),
    ):
        for handler in lg.handlers:
            stream = getattr(handler, "stream", None)
            if stream in (sys.stdout, sys.stderr) or isinstance(handler.formatter, _PlainFormatter):
                continue
            handler.setFormatter(_PlainFormatter(handler.formatter or logging.Formatter()))
