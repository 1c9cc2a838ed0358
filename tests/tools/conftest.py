import importlib.util
import os

import pytest

from lite_detr.data import register_shapes

from ..conftest import ROOT, SHAPES_CFG  # noqa: F401  (re-exported to the tool tests)
from ..conftest import TINY as _TINY

TINY = _TINY + ["dataloader.train.total_batch_size=2"]


def load_tool(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tools_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    register_shapes("tools_shapes", root=str(root), num_train=4, num_val=2, image_size=128)
    return [
        "dataloader.train.dataset.names=tools_shapes_train",
        "dataloader.test.dataset.names=tools_shapes_val",
    ]
