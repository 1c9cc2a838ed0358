import json
import os

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from pycocotools.coco import COCO

from lite_detr.data import (
    SHAPES_CLASSES,
    ensure_shapes_dataset,
    generate_shapes_dataset,
    register_shapes,
    shapes_dataset_dir,
)

ARGS = {"num_train": 12, "num_val": 4, "image_size": 128, "seed": 3}


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("shapes") / "shapes")
    generate_shapes_dataset(out, **ARGS)
    return out


def test_generated_dataset_is_valid_coco(generated):
    for split, num in (("train", 12), ("val", 4)):
        coco = COCO(os.path.join(generated, "annotations", f"instances_{split}.json"))
        assert len(coco.getImgIds()) == num
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == SHAPES_CLASSES
        anns = coco.loadAnns(coco.getAnnIds())
        assert len(anns) >= 3 * num  # 3..10 shapes per image
        for a in anns:
            x, y, w, h = a["bbox"]
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 128 and y + h <= 128
        for img in coco.loadImgs(coco.getImgIds()):
            assert os.path.isfile(os.path.join(generated, img["file_name"]))
    areas = np.array([a["area"] for a in anns])
    assert (areas < 32**2).any(), "no small objects"
    with open(os.path.join(generated, "MANIFEST.json")) as f:
        assert json.load(f)["splits"]["val"]["num_images"] == 4
    assert not [f for f in os.listdir(os.path.dirname(generated)) if ".tmp-" in f]


def test_generation_is_deterministic(generated, tmp_path):
    other = str(tmp_path / "again")
    generate_shapes_dataset(other, **ARGS)
    for split in ("train", "val"):
        name = f"annotations/instances_{split}.json"
        with open(os.path.join(generated, name)) as a, open(os.path.join(other, name)) as b:
            assert json.load(a) == json.load(b)


def test_half_written_folder_is_regenerated(generated, tmp_path):
    out = str(tmp_path / "shapes")
    # an interrupted generation: images but no manifest
    os.makedirs(os.path.join(out, "train"))
    with open(os.path.join(out, "train", "000000.jpg"), "wb") as f:
        f.write(b"truncated")
    ensure_shapes_dataset(out, **ARGS)
    with open(os.path.join(out, "MANIFEST.json")) as f:
        assert json.load(f)["seed"] == 3
    assert len(os.listdir(os.path.join(out, "train"))) == 12
    with open(os.path.join(out, "train", "000000.jpg"), "rb") as f:
        assert f.read(2) == b"\xff\xd8"  # a real JPEG replaced the truncated file
    # a valid folder is reused as is
    mtime = os.path.getmtime(os.path.join(out, "MANIFEST.json"))
    ensure_shapes_dataset(out, **ARGS)
    assert os.path.getmtime(os.path.join(out, "MANIFEST.json")) == mtime
    # a deleted image makes it incomplete again
    os.remove(os.path.join(out, "val", "000001.jpg"))
    ensure_shapes_dataset(out, **ARGS)
    assert os.path.isfile(os.path.join(out, "val", "000001.jpg"))


def test_register_is_lazy_and_sets_metadata(tmp_path):
    register_shapes("lazy_shapes", root=str(tmp_path), **ARGS)
    assert not os.path.exists(shapes_dataset_dir("lazy_shapes", str(tmp_path)))
    meta = MetadataCatalog.get("lazy_shapes_val")
    assert meta.thing_classes == SHAPES_CLASSES
    assert meta.evaluator_type == "coco"
    assert meta.json_file.endswith("instances_val.json")
    dicts = DatasetCatalog.get("lazy_shapes_val")
    assert len(dicts) == 4 and os.path.isfile(meta.json_file)
    ann = dicts[0]["annotations"][0]
    assert 0 <= ann["category_id"] < len(SHAPES_CLASSES)


def test_builtin_names_registered():
    import lite_detr.data  # noqa: F401

    for name in ("shapes_train", "shapes_val"):
        assert name in DatasetCatalog.list()
        assert MetadataCatalog.get(name).thing_classes == SHAPES_CLASSES


def test_interrupted_generations_are_removed(tmp_path):
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # a pid that no longer runs: its generation was killed
    stale = tmp_path / f".tiny.tmp-{proc.pid}"
    (stale / "train").mkdir(parents=True)
    (stale / "train" / "000000.jpg").write_bytes(b"half an image")
    ensure_shapes_dataset(str(tmp_path / "tiny"), num_train=2, num_val=1, image_size=64)
    assert sorted(os.listdir(tmp_path)) == [".tiny.lock", "tiny"]


def test_datasets_root_that_is_a_file(tmp_path, monkeypatch):
    root = tmp_path / "datasets"
    root.write_text("")
    monkeypatch.setenv("DETECTRON2_DATASETS", str(root))
    with pytest.raises(OSError, match=r"\$DETECTRON2_DATASETS=.*datasets'.*writable folder"):
        ensure_shapes_dataset(str(root / "shapes"), num_train=2, num_val=1, image_size=64)


def test_changed_json_of_a_generated_dataset_says_delete_to_regenerate(tmp_path):
    # instances_train.json emptied after the generation gave a traceback
    from lite_detr.data import DatasetError, check_shapes_dataset

    args = {"num_train": 2, "num_val": 1, "image_size": 64}
    register_shapes("emptied", root=str(tmp_path), **args)
    out = str(tmp_path / "emptied")
    assert len(DatasetCatalog.get("emptied_train")) == 2  # generated on first use
    check_shapes_dataset(out, **args)
    with open(os.path.join(out, "annotations", "instances_train.json"), "w"):
        pass
    message = rf"shapes dataset in {out} was changed .*instances_train.json.*delete {out}"
    with pytest.raises(DatasetError, match=message):
        check_shapes_dataset(out, **args)  # what check_config runs before training
    with pytest.raises(DatasetError, match=message):
        DatasetCatalog.get("emptied_train")


def test_lock_wait_has_a_timeout(tmp_path, monkeypatch):
    # no lock wait without a timeout; another process's generation is waited
    # for at most LOCK_TIMEOUT_S
    from filelock import FileLock

    from lite_detr.data.datasets import shapes

    monkeypatch.setattr(shapes, "LOCK_TIMEOUT_S", 0.2)
    with FileLock(str(tmp_path / ".held.lock")):  # another "process" generates this dataset
        with pytest.raises(OSError, match=r"Waited 0.2 s for .*\.held\.lock.*generating"):
            ensure_shapes_dataset(str(tmp_path / "held"), num_train=2, num_val=1, image_size=64)
