"""
Crash-safe writes: every file the project writes goes to a temporary name beside the target, is
flushed to disk and then renamed over the target, so a reader (or a run resumed after kill -9)
sees either the old file or the complete new one, never a truncated one.

Temporary names are ``.<name>.tmp-<pid>``; :func:`remove_stale_temporaries` deletes those left
by processes that no longer exist.
"""

import contextlib
import logging
import os
import re
import shutil
from typing import List

__all__ = [
    "atomic_write",
    "pid_alive",
    "publish_folder",
    "remove_stale_temporaries",
    "temporary_path",
]

logger = logging.getLogger(__name__)

_TEMPORARY = re.compile(r"^\..+\.tmp-(?P<pid>\d+)$")


def temporary_path(path: str) -> str:
    """The temporary name of ``path`` for this process: ``<dir>/.<name>.tmp-<pid>``."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.tmp-{os.getpid()}")


def _fsync_folder(folder: str) -> None:
    # makes the rename itself durable; not every file system allows opening a folder
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w", **open_kwargs):
    """
    ``open(path, mode)`` that replaces ``path`` only once the ``with`` block has completed.

    The data goes to :func:`temporary_path`, is flushed and fsync'ed, then renamed over ``path``.
    On any exception (including ``KeyboardInterrupt``) the temporary file is removed and ``path``
    keeps its previous content.

    Example::

        with atomic_write("out/model.pth", "wb") as f:
            torch.save(state, f)
    """
    if mode[0] not in "wx":
        raise ValueError(f"atomic_write writes whole files: mode must start with 'w', got {mode!r}")
    tmp = temporary_path(path)
    try:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _fsync_folder(os.path.dirname(os.path.abspath(path)))


def publish_folder(tmp_dir: str, path: str) -> None:
    """Rename a completely written folder ``tmp_dir`` to ``path`` (which must not exist)."""
    os.rename(tmp_dir, path)
    _fsync_folder(os.path.dirname(os.path.abspath(path)))


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (on this machine)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def remove_stale_temporaries(folder: str) -> List[str]:
    """
    Delete the temporary files and folders in ``folder`` (``.<name>.tmp-<pid>``) whose writing
    process no longer exists, i.e. leftovers of a killed or crashed write.

    Returns:
        list[str]: the removed paths.
    """
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = _TEMPORARY.match(name)
        if m is None or pid_alive(int(m.group("pid"))):
            continue
        path = os.path.join(folder, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.remove(path)
        if not os.path.lexists(path):
            removed.append(path)
            logger.info(f"Removed {path}, left by an interrupted write (process {m['pid']}).")
    return removed
