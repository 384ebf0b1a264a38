"""Voxel-overlap metrics of one binary structure: Dice, IoU and volumes.

Empty structures follow one rule everywhere in :mod:`volseg.evaluation`: when the
reference and the prediction are both empty the score is undefined (NaN, left out of
every mean and counted as ``both_empty``); when only one of them is empty the overlap
scores are 0. :func:`dice_score` is the one Dice of volseg: post-processing
(:mod:`volseg.postprocessing.choose`) optimizes the same number that evaluation reports.
"""

from __future__ import annotations

import numpy as np


def overlap_metrics(pred: np.ndarray, ref: np.ndarray, voxel_volume_mm3: float) -> dict[str, float]:
    """Dice, IoU and volumes of two binary masks on the same grid.

    Args:
        pred: Predicted mask, bool (z, y, x).
        ref: Reference mask, bool (z, y, x), same shape as ``pred``.
        voxel_volume_mm3: Volume of one voxel in mm³ (product of the spacing).

    Returns:
        ``dice``, ``iou`` (NaN when both masks are empty), ``volume_ref_mm3``,
        ``volume_pred_mm3`` and ``volume_diff_mm3`` (prediction minus reference).
    """
    n_pred = int(np.count_nonzero(pred))
    n_ref = int(np.count_nonzero(ref))
    tp = int(np.count_nonzero(pred & ref)) if n_pred and n_ref else 0
    return scores_from_counts(tp, n_pred, n_ref, voxel_volume_mm3)


def dice_from_counts(tp: int, n_pred: int, n_ref: int) -> float:
    """Dice from voxel counts: 2 tp / (|pred| + |ref|), NaN when both masks are empty."""
    return 2.0 * tp / (n_pred + n_ref) if n_pred + n_ref else float("nan")


def dice_score(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two binary masks of the same shape; NaN when both are empty (see the module docstring).

    Example:
        >>> dice_score(np.zeros((2, 2, 2), bool), np.zeros((2, 2, 2), bool))
        nan
    """
    n_pred, n_ref = int(np.count_nonzero(pred)), int(np.count_nonzero(ref))
    tp = int(np.count_nonzero(pred & ref)) if n_pred and n_ref else 0
    return dice_from_counts(tp, n_pred, n_ref)


def scores_from_counts(tp: int, n_pred: int, n_ref: int, voxel_volume_mm3: float) -> dict[str, float]:
    """The scores of :func:`overlap_metrics` from voxel counts (true positives, |pred|, |ref|)."""
    union = n_pred + n_ref - tp
    iou = tp / union if union else float("nan")
    return {
        "dice": dice_from_counts(tp, n_pred, n_ref),
        "iou": iou,
        "volume_ref_mm3": n_ref * voxel_volume_mm3,
        "volume_pred_mm3": n_pred * voxel_volume_mm3,
        "volume_diff_mm3": (n_pred - n_ref) * voxel_volume_mm3,
    }
