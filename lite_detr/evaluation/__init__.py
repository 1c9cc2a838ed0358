"""Evaluation helpers: COCO evaluation and FLOP counting with the lite_detr op handles."""

from .coco_evaluation import COCOEvaluator, has_fast_coco_eval, results_table
from .flop_count import LITE_DETR_OP_HANDLES, FlopCountAnalysis

__all__ = [
    "COCOEvaluator",
    "has_fast_coco_eval",
    "results_table",
    "LITE_DETR_OP_HANDLES",
    "FlopCountAnalysis",
]
