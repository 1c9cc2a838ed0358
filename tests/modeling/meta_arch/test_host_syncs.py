"""A training step reads nothing back from the GPU but the matching: no ``.item()``, no ``if
t.any()``, no boolean mask, no copy to the host, in the forward, the losses or the backward.
Each would make the host wait for the GPU in every step. The Hungarian matcher's cost matrix is
the one exception: scipy solves the assignment on the host.

``torch.cuda.set_sync_debug_mode("error")`` (what the attention's test uses) cannot check a whole
step: it also flags every blocking host-to-device copy (the batch, the level sizes), which reads
no device data. :class:`DeviceReads` flags reads only."""

import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import lite_detr.modeling.matcher as matcher

from .conftest import build_tiny_model

aten = torch.ops.aten
# ops whose result (a Python scalar, or an output size) depends on the values of their input
_DATA_DEPENDENT = {
    aten._local_scalar_dense.default,  # .item(), bool(t), int(t), float(t)
    aten.is_nonzero.default,
    aten.equal.default,
    aten.nonzero.default,
    aten.masked_select.default,
    aten._unique2.default,
    aten.unique_consecutive.default,
    aten.unique_dim.default,
    aten.repeat_interleave.Tensor,
}
_INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default}


class DeviceReads(TorchDispatchMode):
    """Records the aten calls that read data of ``device_type`` tensors on the host: the ops of
    ``_DATA_DEPENDENT``, indexing with a boolean mask (a ``nonzero`` inside) and copies to the
    CPU, each with the lite_detr lines that made it. Backward ops are seen too (the mode follows
    the autograd engine's threads), without Python lines."""

    def __init__(self, device_type: str):
        super().__init__()
        self.device_type = device_type
        self.reads = []

    def _on_device(self, t) -> bool:
        return isinstance(t, torch.Tensor) and t.device.type == self.device_type

    def _reads(self, func, args, kwargs) -> bool:
        if not any(self._on_device(t) for t in tree_leaves((args, kwargs))):
            return False
        if func in _DATA_DEPENDENT:
            return True
        if func in _INDEXING:
            return any(self._on_device(i) and i.dtype in (torch.bool, torch.uint8) for i in args[1])
        to_host = self.device_type != "cpu"
        if func is aten._to_copy.default:
            device = kwargs.get("device")
            return to_host and device is not None and torch.device(device).type == "cpu"
        if func is aten.copy_.default:
            return to_host and args[0].device.type == "cpu"
        return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self._reads(func, args, kwargs):
            lines = [
                f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.line}"
                for f in traceback.extract_stack()
                if "lite_detr" in f.filename
            ]
            self.reads.append(f"{func} at " + (" <- ".join(reversed(lines)) or "(backward)"))
        return func(*args, **kwargs)


def test_device_reads_are_recorded():
    """The recorder itself, on the CPU standing in for the device."""
    x = torch.arange(6.0)
    with DeviceReads("cpu") as reads:
        y = x * 2 + 1  # no read
        _ = y[y > 4]  # boolean mask
        _ = bool(y.sum() > 3)  # scalar read
    assert len(reads.reads) == 2, reads.reads
    assert "aten.index.Tensor" in reads.reads[0] and "_local_scalar_dense" in reads.reads[1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["lite_dino_r50", "lite_h_detr_r50"])
def test_cuda_training_step_reads_nothing_back_but_the_matching(name, make_input, monkeypatch):
    model = build_tiny_model(name).cuda().train()
    # CPU inputs, as the data loader gives them
    batch = [
        make_input(64, 64, [[1, 1, 20, 20], [10, 10, 40, 50]], [0, 2]),
        make_input(48, 64, [[5, 5, 30, 30]], [1], seed=1),
    ]
    sum(model(batch).values()).backward()  # warm-up: lazy initialisations may read once
    torch.cuda.synchronize()

    reads = DeviceReads("cuda")
    assign = matcher._assign

    def assign_unrecorded(cost):  # the matcher's one host copy, which scipy needs
        with torch.utils._python_dispatch._disable_current_modes():
            return assign(cost)

    monkeypatch.setattr(matcher, "_assign", assign_unrecorded)
    with reads:
        losses = model(batch)
        sum(losses.values()).backward()
    assert not reads.reads, "reads of GPU data in a training step:\n" + "\n".join(reads.reads)
    assert all(torch.isfinite(v) for v in losses.values())
