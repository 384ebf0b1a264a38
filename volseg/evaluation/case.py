"""Scores of one case: every metric for every label and region, on arrays."""

from __future__ import annotations

import numpy as np

from volseg.evaluation.labels import mask_of, normalize_labels
from volseg.evaluation.lesions import LesionConfig, lesion_metrics
from volseg.evaluation.overlap import overlap_metrics
from volseg.evaluation.surface import bounding_box, surface_metrics

#: Per-label metric names, in the order tables list them.
METRICS = ("dice", "iou", "surface_dice", "hd95_mm", "assd_mm",
           "volume_ref_mm3", "volume_pred_mm3", "volume_diff_mm3")


def evaluate_case(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, float, float],
                  labels: dict[str, int | tuple[int, ...]], tolerance_mm: float = 1.0,
                  lesion_cfg: LesionConfig | None = None) -> dict[str, dict]:
    """Score a predicted label map against a reference label map.

    Args:
        pred: Predicted label map, integer (z, y, x).
        ref: Reference label map, integer (z, y, x), same shape as ``pred``.
        spacing: Voxel size (z, y, x) in mm.
        labels: What to score: name → label value, or name → tuple of values for a region
            (their union). Background (value 0) is skipped.
        tolerance_mm: Tolerance of the normalized surface Dice, in mm.
        lesion_cfg: When given, lesion-wise detection metrics are added under ``"lesions"``.

    Returns:
        name → metrics: ``dice``, ``iou``, ``surface_dice``, ``hd95_mm``, ``assd_mm``,
        ``volume_ref_mm3``, ``volume_pred_mm3``, ``volume_diff_mm3`` (floats, NaN where
        undefined, see ``docs/evaluate.md``), ``ref_empty`` and ``pred_empty`` (bools) and,
        with ``lesion_cfg``, ``lesions`` (see :func:`~volseg.evaluation.lesions.lesion_metrics`).

    Raises:
        ValueError: Shapes differ, the arrays are not 3D, or the spacing is not 3 positive numbers.

    Example:
        >>> ref = np.zeros((8, 8, 8), np.uint8); ref[2:6, 2:6, 2:6] = 1
        >>> evaluate_case(ref, ref, (2.0, 1.0, 1.0), {"liver": 1})["liver"]["dice"]
        1.0
    """
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape or pred.ndim != 3:
        raise ValueError(f"pred and ref must be 3D arrays of the same shape, got {pred.shape} and {ref.shape}")
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or not all(s > 0 for s in spacing):
        raise ValueError(f"spacing must be 3 positive numbers (z, y, x) in mm, got {spacing}")
    labels = normalize_labels(labels)
    box = bounding_box((pred != 0) | (ref != 0))
    if box is not None:  # every structure lies in the box of the foreground: score only that
        pred, ref = pred[box], ref[box]
    else:
        pred = ref = np.zeros((1, 1, 1), np.uint8)
    return {name: _structure_metrics(mask_of(pred, value), mask_of(ref, value), spacing, tolerance_mm, lesion_cfg)
            for name, value in labels.items()}


def _structure_metrics(pred: np.ndarray, ref: np.ndarray, spacing, tolerance_mm: float,
                       lesion_cfg: LesionConfig | None) -> dict:
    out = overlap_metrics(pred, ref, float(np.prod(spacing)))
    out.update(surface_metrics(pred, ref, spacing, tolerance_mm))
    out = {k: float(out[k]) for k in METRICS}
    out["ref_empty"] = out["volume_ref_mm3"] == 0
    out["pred_empty"] = out["volume_pred_mm3"] == 0
    if lesion_cfg is not None:
        out["lesions"] = lesion_metrics(pred, ref, spacing, lesion_cfg)
    return out
