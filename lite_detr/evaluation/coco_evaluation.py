"""COCO evaluation that works with or without detectron2's compiled COCOeval."""

import logging
import os
import shutil

from detectron2.data import DatasetCatalog
from detectron2.evaluation import COCOEvaluator as _D2COCOEvaluator
from detectron2.utils import comm

from lite_detr.utils import remove_stale_temporaries, temporary_path

__all__ = ["COCOEvaluator", "has_fast_coco_eval", "results_table"]

logger = logging.getLogger(__name__)


def has_fast_coco_eval() -> bool:
    """Whether detectron2 was built with its C++ COCOeval (``use_fast_impl=True`` works)."""
    try:
        from detectron2 import _C
    except ImportError:
        return False
    return hasattr(_C, "COCOevalEvaluateImages") and hasattr(_C, "COCOevalAccumulate")


class COCOEvaluator(_D2COCOEvaluator):
    """
    detectron2's ``COCOEvaluator`` for boxes, with ``use_fast_impl`` chosen automatically.

    Builds without detectron2's C++ sources (e.g. the PyPI sdist) lack the fast COCOeval: there
    detectron2's default ``use_fast_impl=True`` crashes at the end of evaluation, after all
    inference time is spent. The dataset is also materialised first, so a lazily generated
    dataset (``shapes_val``) exists before its ``json_file`` is opened. Its output files are
    replaced atomically.
    """

    def __init__(
        self,
        dataset_name: str,
        tasks=("bbox",),
        distributed: bool = True,
        output_dir: str | None = None,
        *,
        use_fast_impl: bool | None = None,
        **kwargs,
    ):
        """
        Args:
            dataset_name (str): a registered dataset with COCO json annotations.
            tasks (tuple[str]): tasks to evaluate; the DETR detectors here predict boxes.
            distributed (bool): gather results from all ranks.
            output_dir (str, optional): where ``coco_instances_results.json`` is written.
            use_fast_impl (bool, optional): None picks the C++ COCOeval when it is built.
            kwargs: passed to detectron2's ``COCOEvaluator`` (``max_dets_per_image``, ...).
        """
        if dataset_name not in DatasetCatalog.list():
            raise KeyError(
                f"COCOEvaluator: dataset {dataset_name!r} is not registered. Registered datasets "
                "include: " + ", ".join(sorted(DatasetCatalog.list())[:20]) + ", ... "
                "(import lite_detr.data to register shapes_train/shapes_val)."
            )
        DatasetCatalog.get(dataset_name)  # generate/validate lazily built datasets
        fast = has_fast_coco_eval()
        if use_fast_impl is None:
            use_fast_impl = fast
        elif use_fast_impl and not fast:
            logger.warning(
                "use_fast_impl=True but detectron2 has no compiled COCOeval: using pycocotools."
            )
            use_fast_impl = False
        super().__init__(
            dataset_name,
            tasks=tasks,
            distributed=distributed,
            output_dir=output_dir,
            use_fast_impl=use_fast_impl,
            **kwargs,
        )

    def evaluate(self, img_ids=None):
        """detectron2's ``evaluate``; its files (``instances_predictions.pth``,
        ``coco_instances_results.json``) are written to a temporary folder and renamed into
        ``output_dir`` once complete, so an interrupted evaluation leaves the previous ones."""
        out = self._output_dir
        if not out or not comm.is_main_process():
            return super().evaluate(img_ids)
        os.makedirs(out, exist_ok=True)
        remove_stale_temporaries(out)
        tmp = temporary_path(os.path.join(out, "coco_eval"))
        self._output_dir = tmp
        try:
            ret = super().evaluate(img_ids)
            for name in os.listdir(tmp) if os.path.isdir(tmp) else []:
                os.replace(os.path.join(tmp, name), os.path.join(out, name))
        finally:
            self._output_dir = out
            shutil.rmtree(tmp, ignore_errors=True)
        return ret


SUMMARY_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def results_table(results) -> str:
    """
    Evaluation results (``{task: {metric: value}}``, as ``inference_on_dataset`` returns) as one
    readable table per task: the COCO summary metrics (per-class AP is logged by the evaluator).
    A metric the dataset cannot give (no boxes of that size) shows as ``nan``.
    """
    from detectron2.utils.logger import create_small_table

    parts = []
    for task, metrics in results.items():
        shown = {k: metrics[k] for k in SUMMARY_METRICS if k in metrics} or dict(metrics)
        parts.append(f"{task}:\n{create_small_table(shown)}")
    return "\n".join(parts)
