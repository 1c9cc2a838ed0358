"""Capture and restore the global random number generators (Python, NumPy, torch, CUDA)."""

import contextlib
import random
from typing import Dict

import numpy as np
import torch

__all__ = ["get_rng_states", "set_rng_states", "preserved_rng_states"]


def get_rng_states() -> Dict:
    """
    The states of ``random``, ``numpy.random``, torch's CPU generator and the current CUDA
    device's generator (if CUDA is initialised), as tensors, ints and tuples only: checkpoints
    that hold them still load with ``torch.load(weights_only=True)``.
    """
    version, internal, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    states = {
        "python": (version, tuple(internal), gauss),
        "numpy": (torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def set_rng_states(states: Dict) -> None:
    """Restore what :func:`get_rng_states` returned."""
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


@contextlib.contextmanager
def preserved_rng_states():
    """Run a block (e.g. evaluation during training) without changing the global RNG states."""
    states = get_rng_states()
    try:
        yield
    finally:
        set_rng_states(states)
