"""Training defaults, compatible with detectron2's ``tools/lazyconfig_train_net.py``.

Keys beyond detectron2's own (``epochs``, ``clip_grad``, ``model_ema``, ``amp.dtype``) are read
by our ``train_net.py``; detectron2's script ignores them (and so cannot run a config that sets
``epochs`` instead of ``max_iter``). :func:`coco_train` gives the ``train`` of the COCO recipes.
"""

import copy

# torchvision's ImageNet ResNet-50 (RGB input), the backbone start of every R50 recipe here
IMAGENET_R50 = "detectron2://ImageNetPretrained/torchvision/R-50.pkl"

train = {
    "output_dir": "./output",
    "init_checkpoint": "",
    "max_iter": 90000,
    # the run length in epochs instead (then max_iter = None): train_net.py derives max_iter =
    # epochs * ceil(training images / dataloader.train.total_batch_size) when training starts
    "epochs": None,
    "amp": {"enabled": False, "dtype": "float16"},  # dtype: "float16" or "bfloat16"
    "ddp": {"broadcast_buffers": False, "find_unused_parameters": False, "fp16_compression": False},
    "checkpointer": {"period": 5000, "max_to_keep": 100},
    "eval_period": 5000,
    "log_period": 20,
    "device": "cuda",
    # gradient clipping on the total L2 norm (DETR recipe), applied after AMP unscaling
    "clip_grad": {"enabled": True, "params": {"max_norm": 0.1, "norm_type": 2}},
    # exponential moving average of the weights, kept in checkpoints; when enabled, periodic
    # evaluation and --eval-only use the EMA weights
    "model_ema": {"enabled": False, "decay": 0.9998},
    "seed": -1,
    # images that are missing, unreadable, truncated or of another size than their annotation
    # stop the run before training (False), or are skipped with a warning and a count (True);
    # the same for an image that cannot be read during training (deleted, damaged)
    "skip_bad_images": False,
}


def coco_train(epochs: int, output_dir: str, init_checkpoint: str = IMAGENET_R50) -> dict:
    """``train`` of a COCO recipe on GPUs: ``epochs`` passes over the training set (with
    ``max_iter = None``: train_net.py derives the iterations from the dataset and the batch; pair
    it with ``lr_multiplier_{epochs}ep`` of ``coco_schedule.py``), evaluation and a checkpoint
    every 7500 iterations, starting from ``init_checkpoint`` (ImageNet weights of the backbone)."""
    recipe = copy.deepcopy(train)
    recipe["init_checkpoint"] = init_checkpoint
    recipe["output_dir"] = output_dir
    recipe["epochs"] = epochs
    recipe["max_iter"] = None
    recipe["eval_period"] = 7500
    recipe["checkpointer"]["period"] = 7500
    recipe["device"] = "cuda"
    return recipe
