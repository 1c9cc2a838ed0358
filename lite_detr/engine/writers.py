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

__all__ = ["StrictJSONWriter", "EarlyPeriodicWriter", "build_writers", "plain_log_files"]

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
    (e.g. the AP of an object size the dataset has no boxes of) is written as ``null``."""

    def __init__(self, json_file: str, window_size: int = 20):
        super().__init__(json_file, window_size)
        self._file_handle = _StrictJSONLines(self._file_handle)


class EarlyPeriodicWriter(hooks.PeriodicWriter):
    """``PeriodicWriter`` that also writes after the first iteration, so the first progress
    line (losses, time per iteration) comes at once instead of after ``period`` iterations."""

    def after_step(self):
        if self.trainer.iter == self.trainer.start_iter and (self.trainer.iter + 1) % self._period:
            for writer in self._writers:
                writer.write()
        super().after_step()


def build_writers(output_dir: str, max_iter: int) -> List[EventWriter]:
    """detectron2's ``default_writers`` with :class:`StrictJSONWriter`."""
    os.makedirs(output_dir, exist_ok=True)
    return [
        CommonMetricPrinter(max_iter),
        StrictJSONWriter(os.path.join(output_dir, "metrics.json")),
        TensorboardXWriter(output_dir),
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
