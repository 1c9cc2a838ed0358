#!/usr/bin/env python
"""
Train or evaluate a Lite DETR LazyConfig with detectron2's trainer.

    python train_net.py --config-file projects/lite_dino/configs/lite_dino_r18_shapes_cpu.py
    python train_net.py --config-file CONFIG --num-gpus 8 train.amp.enabled=True
    python train_net.py --config-file CONFIG --eval-only train.init_checkpoint=model_final.pth
    python train_net.py --config-file CONFIG --resume   # continue from output_dir/last_checkpoint
    python train_net.py --config-file CONFIG --overwrite  # replace the run in train.output_dir

Same ``train`` keys as detectron2's ``tools/lazyconfig_train_net.py`` (which can run the configs
that set ``train.max_iter``), plus ``train.epochs`` (the COCO configs' run length, in passes over
the training set), ``train.amp.dtype``, ``train.clip_grad`` and ``train.model_ema``.
"""

import logging
import os
import signal
import sys

from lite_detr.config import ConfigError, load_config
from lite_detr.engine import default_argument_parser, train_or_evaluate
from lite_detr.engine.cli import exit_with_error
from lite_detr.engine.launch import DistributedLaunchError, launch_checked

if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    # SIGTERM (a scheduler's preemption, `kill`) stops like Ctrl-C: checkpoints are written
    # atomically, so an interrupted save leaves the previous one intact
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        device = load_config(args.config_file, args.opts).train.device
        launch_checked(train_or_evaluate, args, device)
    except ConfigError as e:
        exit_with_error("train_net.py", e, 2)
    except (DistributedLaunchError, FloatingPointError, OSError) as e:
        exit_with_error("train_net.py", e, 1)
    except KeyboardInterrupt:
        print(
            "train_net.py: interrupted; the checkpoints written so far are complete: "
            "continue with --resume.",
            file=sys.stderr,
        )
        # the trainer's hooks and writers have closed by now; leave without the interpreter's
        # shutdown, where the data loader's fd-sharing thread (multiprocessing.resource_sharer)
        # can print a traceback for its closed listener
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
