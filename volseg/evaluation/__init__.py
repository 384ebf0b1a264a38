"""Evaluation: score predicted label maps against references.

Array level (used by training and post-processing)::

    from volseg.evaluation import evaluate_case, LesionConfig
    scores = evaluate_case(pred, ref, spacing, {"liver": 1, "all_lesions": (2, 3)})

Folder level (``volseg evaluate``)::

    summary = evaluate_folders(pred_dir, ref_dir, out_dir, dataset_dir=dataset)

Metric definitions, thresholds and how empty masks are scored: ``docs/evaluate.md``.
"""

from volseg.evaluation.case import METRICS, evaluate_case
from volseg.evaluation.evaluate import evaluate_folders
from volseg.evaluation.lesions import LesionConfig, lesion_metrics
from volseg.evaluation.overlap import overlap_metrics
from volseg.evaluation.surface import surface_metrics

__all__ = ["METRICS", "LesionConfig", "evaluate_case", "evaluate_folders", "lesion_metrics",
           "overlap_metrics", "surface_metrics"]
