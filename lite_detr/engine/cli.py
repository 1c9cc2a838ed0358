"""Command-line helpers shared by ``tools/``."""

import argparse
from typing import Sequence

__all__ = ["add_tasks_argument"]


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
