"""Multi-process jobs of tests/engine/test_distributed.py, started through detectron2's launch
(gloo on the CPU). Run as a script, so that the spawned ranks can import its functions:

    python ddp_worker.py step WORLD_SIZE OUT.pth      one optimizer step on 4 fixed images
    python ddp_worker.py eval WORLD_SIZE OUT.json     COCO AP of fixed detections, gathered
    python ddp_worker.py fail WORLD_SIZE              rank 1 raises while rank 0 waits for it
"""

import json
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "modeling", "meta_arch"))

# 4 images of one size with 2 boxes each: per-rank batches pad alike and the denoising groups
# (num_dn_queries // max boxes per image) are the same in every split of the batch
IMAGES = [
    (0, [[10, 12, 60, 70], [50, 40, 120, 90]], [0, 2]),
    (1, [[5, 5, 30, 40], [70, 20, 110, 60]], [1, 1]),
    (2, [[20, 30, 90, 80], [0, 0, 40, 30]], [2, 0]),
    (3, [[40, 10, 100, 50], [15, 50, 70, 95]], [0, 1]),
]


def _rank_slice(items):
    from detectron2.utils import comm

    per_rank = len(items) // comm.get_world_size()
    return items[comm.get_rank() * per_rank : (comm.get_rank() + 1) * per_rank]


def step(out_path):
    """One AdamW step (with the configs' gradient clipping) of a tiny FrozenBN Lite-DINO on the
    4 images; rank 0 saves the weights before and after. Denoising noise is off, so nothing is
    random."""
    from conftest import _make_input, build_tiny_model
    from detectron2.engine.defaults import create_ddp_model
    from detectron2.utils import comm

    torch.set_num_threads(1)
    model = build_tiny_model(
        "lite_dino_r50",
        ["model.denoising.label_noise_ratio=0.0", "model.denoising.box_noise_scale=0.0"],
        seed=0,
    ).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ddp = create_ddp_model(model, broadcast_buffers=False, device_ids=None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    batch = [_make_input(96, 128, boxes, classes, seed=seed) for seed, boxes, classes in IMAGES]
    losses = ddp(_rank_slice(batch))
    sum(losses.values()).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.1)
    optimizer.step()
    if comm.is_main_process():
        torch.save({"before": before, "after": model.state_dict()}, out_path)


def evaluate(out_path):
    """Fixed detections of 8 images (ground truth, some shifted, some missing, false positives)
    evaluated by our COCOEvaluator, each rank seeing its share of the images."""
    import numpy as np
    from detectron2.data import DatasetCatalog
    from detectron2.structures import Boxes, Instances
    from detectron2.utils import comm

    from lite_detr.data import register_shapes
    from lite_detr.evaluation import COCOEvaluator

    root = os.path.dirname(os.path.abspath(out_path))
    register_shapes("ddp_eval", root=root, num_train=1, num_val=8, image_size=96)
    dicts = DatasetCatalog.get("ddp_eval_val")  # rank 0 generates; the others wait on its lock
    evaluator = COCOEvaluator("ddp_eval_val", output_dir=None)
    evaluator.reset()
    rng = np.random.default_rng(0)
    shifts = {d["image_id"]: rng.uniform(-6, 6, size=(len(d["annotations"]), 4)) for d in dicts}
    for d in _rank_slice(dicts):
        anns = d["annotations"][1:]  # one object per image is missed
        boxes = np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # XYWH -> XYXY
        boxes += shifts[d["image_id"]][1:]
        boxes = np.concatenate([boxes, [[1, 1, 20, 20]]])  # a false positive
        inst = Instances((d["height"], d["width"]))
        inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        inst.scores = torch.linspace(0.9, 0.3, len(boxes))
        inst.pred_classes = torch.tensor([a["category_id"] for a in anns] + [0])
        evaluator.process([d], [{"instances": inst}])
    results = evaluator.evaluate()
    if comm.is_main_process():
        with open(out_path, "w") as f:
            json.dump(results["bbox"], f)


def fail():
    """Rank 1 raises; rank 0 blocks in a collective that rank 1 never joins."""
    from detectron2.utils import comm

    if comm.get_rank() == 1:
        time.sleep(1)
        raise ValueError("rank 1 cannot read its shard")
    torch.distributed.barrier()


JOBS = {"step": step, "eval": evaluate, "fail": fail}


def run_job(args):
    JOBS[args.job](*args.rest)


if __name__ == "__main__":
    from argparse import Namespace
    from datetime import timedelta

    from lite_detr.engine.launch import DistributedLaunchError, launch_checked

    job, world_size, *rest = sys.argv[1:]
    args = Namespace(
        job=job,
        rest=rest,
        num_gpus=int(world_size),
        num_machines=1,
        machine_rank=0,
        dist_url="auto",
    )
    try:
        launch_checked(run_job, args, "cpu", timeout=timedelta(seconds=60))
    except DistributedLaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
