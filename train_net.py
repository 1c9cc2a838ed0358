#!/usr/bin/env python
"""
Train or evaluate a Lite DETR LazyConfig with detectron2's trainer.

    python train_net.py --config-file projects/lite_dino/configs/lite_dino_r18_shapes_cpu.py
    python train_net.py --config-file CONFIG --num-gpus 8 train.amp.enabled=True
    python train_net.py --config-file CONFIG --eval-only train.init_checkpoint=model_final.pth
    python train_net.py --config-file CONFIG --resume   # continue from output_dir/last_checkpoint
    python train_net.py --config-file CONFIG --overwrite  # replace the run in train.output_dir

Same ``train`` keys as detectron2's ``tools/lazyconfig_train_net.py`` (which can run these
configs too), plus ``train.amp.dtype``, ``train.clip_grad`` and ``train.model_ema``.
"""

import logging
import signal
import sys
import warnings

# fvcore (imported by detectron2) calls torch.jit.script on import, which this torch deprecates:
# a warning on every run that no user can act on
warnings.filterwarnings("ignore", r"`torch\.jit\.script` is deprecated", FutureWarning)

import torch  # noqa: E402
from detectron2.engine import default_argument_parser, default_setup  # noqa: E402
from detectron2.utils import comm  # noqa: E402

from lite_detr.engine import (  # noqa: E402
    ConfigError,
    check_config,
    check_output_dir,
    claim_output_dir,
    do_eval_only,
    do_train,
    load_config,
)
from lite_detr.engine.launch import DistributedLaunchError, launch_checked  # noqa: E402
from lite_detr.engine.writers import plain_log_files  # noqa: E402
from lite_detr.evaluation import results_table  # noqa: E402

logger = logging.getLogger("detectron2")


def main(args):
    cfg = load_config(args.config_file, args.opts)
    check_config(cfg, eval_only=args.eval_only)  # before default_setup writes to output_dir
    lock = None
    if not args.eval_only and comm.is_main_process():
        overwrite = getattr(args, "overwrite", False)
        check_output_dir(cfg.train.output_dir, resume=args.resume, overwrite=overwrite)
        lock = claim_output_dir(cfg.train.output_dir, overwrite=overwrite)
    try:
        plain_log_files(cfg.train.output_dir)  # no colour codes in output_dir/log.txt
        default_setup(cfg, args)
        if comm.get_local_size() > 1 and torch.device(cfg.train.device).type == "cpu":
            # CPU ranks of one machine share its cores
            torch.set_num_threads(max(1, torch.get_num_threads() // comm.get_local_size()))
        if args.eval_only:
            ret = do_eval_only(cfg)
            if comm.is_main_process() and ret:
                names = cfg.dataloader.test.dataset.names
                print(f"Evaluation of {cfg.train.init_checkpoint or 'random weights'} on {names}:")
                print(results_table(ret))
            return ret
        do_train(args, cfg)
    finally:
        if lock is not None:
            lock.close()


def _one_line(e: BaseException) -> str:
    # exceptions re-raised from data-loader workers carry the worker traceback: keep its last line
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(e).__name__


def get_parser():
    parser = default_argument_parser()
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new run in a train.output_dir that holds one (its checkpoints, metrics and "
        "results are deleted); without it such a directory needs --resume",
    )
    return parser


if __name__ == "__main__":
    args = get_parser().parse_args()
    # SIGTERM (a scheduler's preemption, `kill`) stops like Ctrl-C: checkpoints are written
    # atomically, so an interrupted save leaves the previous one intact
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        device = load_config(args.config_file, args.opts).train.device
        launch_checked(main, args, device)
    except (ConfigError, DistributedLaunchError, FloatingPointError, OSError) as e:
        print(f"train_net.py: error: {_one_line(e)}", file=sys.stderr)
        sys.exit(2 if isinstance(e, ConfigError) else 1)
    except KeyboardInterrupt:
        print(
            "train_net.py: interrupted; the checkpoints written so far are complete: "
            "continue with --resume.",
            file=sys.stderr,
        )
        sys.exit(130)
