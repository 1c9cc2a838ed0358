"""Datasets named by the config or registered the detectron2 way are checked before training,
and model.num_classes / class names come from their json."""

import json
import logging
import os
import textwrap

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from PIL import Image

from lite_detr.data import DatasetError, prepare_datasets
from lite_detr.engine import ConfigError, check_config, load_config

from ..conftest import ROOT, TINY

CUSTOM_CFG = os.path.join(ROOT, "projects/lite_dino/configs/lite_dino_r18_custom_cpu.py")


def write_split(folder, split, classes=("apple",), bbox=(2, 3, 10, 12), n=2):
    os.makedirs(os.path.join(folder, split), exist_ok=True)
    images, anns = [], []
    for i in range(1, n + 1):
        Image.new("RGB", (32, 24), (i * 40, 90, 10)).save(os.path.join(folder, split, f"{i}.jpg"))
        images.append({"id": i, "file_name": f"{i}.jpg", "width": 32, "height": 24})
        anns.append({"id": 10 + i, "image_id": i, "category_id": 1, "bbox": list(bbox)})
    cats = [{"id": k + 1, "name": c} for k, c in enumerate(classes)]
    path = os.path.join(folder, f"{split}.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": cats}, f)
    return path


def data_overrides(folder, name):
    """Overrides naming the files; each test registers its own names (the catalog is global)."""
    return [
        f"datasets.train.name={name}_train",
        f"datasets.train.json_file={folder}/train.json",
        f"datasets.train.image_root={folder}/train",
        f"datasets.val.name={name}_val",
        f"datasets.val.json_file={folder}/val.json",
        f"datasets.val.image_root={folder}/val",
    ]


def test_datasets_node_registers_and_takes_num_classes(tmp_path):
    write_split(tmp_path, "train", ("apple", "pear"))
    write_split(tmp_path, "val", ("apple", "pear"))
    cfg = load_config(CUSTOM_CFG, TINY + data_overrides(tmp_path, "node"))
    assert cfg.model.num_classes == 2  # null in the config: from the json
    check_config(cfg)
    assert MetadataCatalog.get("node_val").thing_classes == ["apple", "pear"]
    assert len(DatasetCatalog.get("node_train")) == 2


def test_num_classes_that_disagrees_is_an_error(tmp_path):
    write_split(tmp_path, "train")
    write_split(tmp_path, "val")
    cfg = load_config(
        CUSTOM_CFG, TINY + data_overrides(tmp_path, "mismatch") + ["model.num_classes=4"]
    )
    with pytest.raises(ConfigError, match=r"model.num_classes=4 but dataset .* has 1 classes.*"):
        check_config(cfg)


def test_train_and_val_with_other_classes(tmp_path):
    write_split(tmp_path, "train", ("apple",))
    write_split(tmp_path, "val", ("pear",))
    cfg = load_config(CUSTOM_CFG, TINY + data_overrides(tmp_path, "classes"))
    with pytest.raises(ConfigError, match="have different classes"):
        check_config(cfg)


def test_missing_paths_say_which_override(tmp_path):
    write_split(tmp_path, "train")
    cfg = load_config(CUSTOM_CFG, TINY + data_overrides(tmp_path, "missing")[:3])
    with pytest.raises(ConfigError, match=r"'custom_val' \(datasets.val\) has no annotation file"):
        check_config(cfg)
    with pytest.raises(ConfigError, match="datasets.train.image_root is not"):
        load_config(CUSTOM_CFG, [f"datasets.train.json_file={tmp_path}/train.json"])


def test_register_coco_instances_dataset_is_checked_too(tmp_path):
    """detectron2's own loader would clip this box silently; the check names it first."""
    write_split(tmp_path, "train", bbox=(20, 3, 30, 12))
    write_split(tmp_path, "val")
    register_coco_instances("d2reg_train", {}, f"{tmp_path}/train.json", f"{tmp_path}/train")
    register_coco_instances("d2reg_val", {}, f"{tmp_path}/val.json", f"{tmp_path}/val")
    names = [
        "dataloader.train.dataset.names=d2reg_train",
        "dataloader.test.dataset.names=d2reg_val",
    ]
    match = r"train.json: annotation id 11 .*outside its 32x24"
    with pytest.raises(ConfigError, match=match):  # num_classes: null reads the train json
        load_config(CUSTOM_CFG, TINY + names)
    cfg = load_config(CUSTOM_CFG, TINY + names + ["model.num_classes=1"])
    with pytest.raises(ConfigError, match=match):
        check_config(cfg)
    # inference needs the val dataset only: its class names come from its json
    prepare_datasets(cfg, ("test",), check_images=False)
    assert MetadataCatalog.get("d2reg_val").thing_classes == ["apple"]


def test_skip_bad_images_warns_and_counts(tmp_path, caplog):
    write_split(tmp_path, "train", n=3)
    write_split(tmp_path, "val")
    with open(tmp_path / "train" / "2.jpg", "wb") as f:
        f.write(b"\xff\xd8 not really")
    cfg = load_config(CUSTOM_CFG, TINY + data_overrides(tmp_path, "skip"))
    with pytest.raises(ConfigError, match=r"2.jpg \(image id 2 in .*train.json\) is not an image"):
        check_config(cfg)
    cfg.train.skip_bad_images = True
    with caplog.at_level(logging.WARNING):
        check_config(cfg)
    assert "skipping 1 unreadable image(s)" in caplog.text and "2.jpg" in caplog.text
    files = [os.path.basename(d["file_name"]) for d in DatasetCatalog.get("skip_train")]
    assert files == ["1.jpg", "3.jpg"]


def test_user_config_outside_the_repo(tmp_path):
    """register_coco_instances + lite_detr.model_zoo.get_config in a config file of one's own."""
    write_split(tmp_path, "train", ("kiwi", "plum"))
    write_split(tmp_path, "val", ("kiwi", "plum"))
    user_cfg = tmp_path / "elsewhere" / "my_config.py"
    user_cfg.parent.mkdir()
    user_cfg.write_text(textwrap.dedent(f"""
            from detectron2.data.datasets import register_coco_instances

            from lite_detr.model_zoo import get_config

            for split in ("train", "val"):
                json_file, images = f"{tmp_path}/{{split}}.json", f"{tmp_path}/{{split}}"
                register_coco_instances(f"outside_{{split}}", {{}}, json_file, images)

            cfg = get_config("projects/lite_dino/configs/lite_dino_r18_shapes_cpu.py")
            model, dataloader, optimizer, lr_multiplier, train = (
                cfg.model, cfg.dataloader, cfg.optimizer, cfg.lr_multiplier, cfg.train
            )
            dataloader.train.dataset.names = "outside_train"
            dataloader.test.dataset.names = "outside_val"
            model.num_classes = None
            """))
    load_config(str(user_cfg), [])  # train_net.py loads it twice in one process
    cfg = load_config(str(user_cfg), TINY)
    check_config(cfg)
    assert cfg.model.num_classes == 2
    assert MetadataCatalog.get("outside_val").thing_classes == ["kiwi", "plum"]


def test_get_config_of_an_unknown_path():
    from lite_detr.model_zoo import get_config

    with pytest.raises(FileNotFoundError, match="relative to the repository root"):
        get_config("lite_dino/nope.py")


def test_r50_config_on_own_files_and_re_registration(tmp_path):
    for folder in (tmp_path / "a", tmp_path / "b"):
        write_split(folder, "train")
        write_split(folder, "val")
    r50 = os.path.join(ROOT, "projects/lite_dino/configs/lite_dino_r50_4scale_h3l1_a2b3_12ep.py")
    cfg = load_config(r50, data_overrides(tmp_path / "a", "r50"))
    assert cfg.dataloader.test.dataset.names == "r50_val"
    with pytest.raises(DatasetError, match="model.num_classes=80 but .* has 1 classes"):
        prepare_datasets(cfg, ("train",), check_images=False)
    # other files under the same name replace the registration
    load_config(r50, data_overrides(tmp_path / "b", "r50"))
    assert MetadataCatalog.get("r50_train").json_file == f"{tmp_path}/b/train.json"


def test_training_json_without_annotations_is_one_line(tmp_path):
    # not detectron2's "AssertionError: No valid data found" traceback
    json_file = write_split(tmp_path, "train")
    write_split(tmp_path, "val")
    with open(json_file) as f:
        data = json.load(f)
    data["annotations"] = []
    with open(json_file, "w") as f:
        json.dump(data, f)
    match = r"nothing to train on: .*train.json \(2 images\) holds no annotations"
    cfg = load_config(CUSTOM_CFG, TINY + data_overrides(tmp_path, "empty"))
    with pytest.raises(ConfigError, match=match):
        check_config(cfg)
    # the same files registered the detectron2 way
    register_coco_instances("d2empty_train", {}, json_file, f"{tmp_path}/train")
    register_coco_instances("d2empty_val", {}, f"{tmp_path}/val.json", f"{tmp_path}/val")
    names = [
        "dataloader.train.dataset.names=d2empty_train",
        "dataloader.test.dataset.names=d2empty_val",
        "model.num_classes=1",
    ]
    with pytest.raises(ConfigError, match=match):
        check_config(load_config(CUSTOM_CFG, TINY + names))
