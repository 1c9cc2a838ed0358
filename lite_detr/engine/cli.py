"""Command-line helpers shared by ``train_net.py`` and ``tools/``."""

import argparse
import os
import sys
from typing import Callable, NoReturn, Sequence, Tuple, Type, TypeVar

from detectron2.utils.logger import setup_logger

from ..config import ConfigError

__all__ = [
    "LOAD_PER_CORE",
    "add_tasks_argument",
    "exit_with_error",
    "machine_is_busy",
    "one_line",
    "read_load",
    "run_tool",
]

# timings (tools/benchmark.py) and the demo's duration are flagged above this 1-minute load
# average per core
LOAD_PER_CORE = 0.5

T = TypeVar("T")


def read_load() -> Tuple[float, int]:
    """1-minute load average (0 where the system has none) and the cores this process may use."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return load, cores or 1


def machine_is_busy(load: float, cores: int) -> bool:
    """Whether other work takes enough of the cores to distort timings (above LOAD_PER_CORE)."""
    return load > LOAD_PER_CORE * cores


def one_line(e: BaseException) -> str:
    """The message of ``e`` as one line: exceptions re-raised from data-loader workers carry the
    worker's traceback, of which the last line is the error."""
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(e).__name__


def exit_with_error(prog: str, e: BaseException, status: int = 2) -> NoReturn:
    """Print ``<prog>: error: <message>`` (as argparse does for bad arguments) and exit."""
    print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
    sys.exit(status)


def run_tool(
    prog: str,
    body: Callable[[], T],
    errors: Tuple[Type[BaseException], ...] = (),
    loggers: Sequence[str] = ("lite_detr",),
) -> T:
    """
    The frame of a tool's ``main()``: console logging for ``loggers``, then ``body()``. Bad user
    input, a :class:`~lite_detr.config.ConfigError` or one of ``errors``, ends the tool with one
    line on stderr and exit status 2; any other exception propagates with its traceback.

    Example::

        def main(argv=None):
            args = get_parser().parse_args(argv)
            return run_tool("demo.py", lambda: run(args))
    """
    for name in loggers:
        setup_logger(name=name)
    try:
        return body()
    except (ConfigError, *errors) as e:
        exit_with_error(prog, e)


class _TasksAction(argparse.Action):
    """``--tasks a b key=value ...``: words with ``=`` are config overrides, not tasks."""

    def __call__(self, parser, namespace, values, option_string=None):
        tasks = [v for v in values if "=" not in v]
        bad = [t for t in tasks if t not in self.task_choices]
        if bad or not tasks:
            parser.error(
                f"argument --tasks: invalid choice: {bad[0]!r} (choose from "
                f"{', '.join(self.task_choices)})"
                if bad
                else f"argument --tasks: name at least one of {', '.join(self.task_choices)}"
            )
        setattr(namespace, self.dest, tasks)
        namespace.task_overrides = [v for v in values if "=" in v]


def add_tasks_argument(
    parser: argparse.ArgumentParser, choices: Sequence[str], default: Sequence[str]
) -> None:
    """
    Add ``--tasks`` (one or more of ``choices``) so that ``key=value`` config overrides may
    follow it: ``--tasks flop parameter train.device=cpu``. The overrides that argparse would
    give to ``--tasks`` are in ``args.task_overrides`` (prepend them to the positional ones).
    """
    action = parser.add_argument(
        "--tasks",
        nargs="+",
        default=list(default),
        action=_TasksAction,
        metavar="TASK",
        help=f"one or more of: {', '.join(choices)}",
    )
    action.task_choices = list(choices)
    parser.set_defaults(task_overrides=[])
