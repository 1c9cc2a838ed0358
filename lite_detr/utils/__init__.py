"""Small helpers shared by the engine, the data code and the tools."""

from .file_io import (
    atomic_write,
    pid_alive,
    publish_folder,
    remove_stale_temporaries,
    temporary_path,
)
from .rng import get_rng_states, preserved_rng_states, set_rng_states

__all__ = [
    "atomic_write",
    "pid_alive",
    "publish_folder",
    "remove_stale_temporaries",
    "temporary_path",
    "get_rng_states",
    "preserved_rng_states",
    "set_rng_states",
]
