"""Shared test settings: the demo config and the overrides that shrink it for CPU tests."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES_CFG = os.path.join(ROOT, "projects/lite_dino/configs/lite_dino_r18_shapes_cpu.py")
# a small Lite-DINO of the demo config's structure, fast enough for CPU tests
TINY_MODEL = [
    "model.embed_dim=64",
    "model.position_embedding.num_pos_feats=32",
    "model.encoder.feedforward_dim=128",
    "model.encoder.low_feedforward_dim=64",
    "model.decoder.feedforward_dim=128",
    "model.decoder.num_layers=2",
    "model.num_queries=30",
    "model.select_box_nums_for_evaluation=30",
    "model.denoising.num_dn_queries=10",
    "dataloader.train.num_workers=0",
    "dataloader.test.num_workers=0",
]
# ... on 128 px images
TINY = TINY_MODEL + ["dataloader.input_size=128"]
