"""The detection sweep: score threshold and minimum box size chosen on held-out predictions.

A :class:`~volseg.tasks.base.Calibrator` (``MODEL/detection_sweep.json``): on every validated
fold's ``CASE_boxes.json`` and its reference findings, each pair (score threshold, minimum
diameter in mm) of a small grid is scored by the LUNA16 CPM of the boxes it keeps; the best
pair wins, ties going to the lower threshold and the smaller size (which keep more
candidates). ``predict`` applies it (:func:`apply_box_rules`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

SCORE_THRESHOLDS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)
MIN_SIZES_MM = (0.0, 2.0, 3.0, 4.0)


def box_diameters_mm(boxes: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Mean physical edge length (mm) of (N, 6) voxel boxes (z0, y0, x0, z1, y1, x1) on a grid of ``spacing`` (z, y, x)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 6)
    return ((boxes[:, 3:] - boxes[:, :3]) * np.asarray(spacing, dtype=np.float64)).mean(axis=1)


def apply_box_rules(boxes: dict, params: dict, spacing: Sequence[float]) -> dict:
    """Keep the boxes with ``score >= params["score_threshold"]`` and diameter ≥ ``params["min_size_mm"]``.

    Args:
        boxes: ``{"boxes": (N, 6) voxels of the input image, "scores": (N,), "classes": (N,)}``.
        params: ``{"score_threshold": float, "min_size_mm": float}``.
        spacing: Voxel spacing (z, y, x) of the input image, mm.
    """
    keep = (np.asarray(boxes["scores"]) >= float(params.get("score_threshold", 0.0))) & (
        box_diameters_mm(boxes["boxes"], spacing) >= float(params.get("min_size_mm", 0.0)))
    return {k: np.asarray(v)[keep] for k, v in boxes.items()}


def _case_candidates(path: Path) -> np.ndarray:
    """(n, 5) x, y, z (mm), score, diameter (mm) of the boxes in one ``CASE_boxes.json``."""
    record = json.loads(path.read_text(encoding="utf-8"))
    rows = [[*b["centre_world_mm"], b["score"], b["diameter_mm"]] for b in record["boxes"]]
    return np.asarray(rows, dtype=np.float64).reshape(-1, 5)


class DetectionSweep:
    """Score threshold and minimum size maximizing the held-out CPM."""

    name = "detection_sweep"

    def __init__(self, plans: dict) -> None:
        self.plans = plans

    def fit(self, validation_dirs: list[Path]) -> dict | None:
        from volseg.evaluation.detection import read_points_csv
        from volseg.evaluation.froc import evaluate_froc

        candidates, annotations, excluded, scans = {}, {}, {}, []
        for folder in validation_dirs:
            ref = folder / "reference"
            if not (ref / "annotations.csv").is_file():
                continue
            annotations.update(read_points_csv(ref / "annotations.csv", "diameter_mm"))
            excluded.update(read_points_csv(ref / "annotations_excluded.csv", "diameter_mm"))
            ids = [c for c in (ref / "scans.txt").read_text(encoding="utf-8").split() if c]
            scans += ids
            for c in ids:
                if (folder / f"{c}_boxes.json").is_file():
                    candidates[c] = _case_candidates(folder / f"{c}_boxes.json")
        if not scans or not any(len(v) for v in annotations.values()):
            return None
        results = []
        for thr in SCORE_THRESHOLDS:
            for size in MIN_SIZES_MM:
                kept = {c: v[(v[:, 3] >= thr) & (v[:, 4] >= size)][:, :4] for c, v in candidates.items()}
                r = evaluate_froc(annotations, kept, excluded, scans, n_bootstrap=0)
                results.append((r.cpm, -thr, -size))
        cpm, thr, size = max(results)
        return {"score_threshold": -thr, "min_size_mm": -size, "cpm": round(float(cpm), 4),
                "num_cases": len(scans), "grid": {"score_threshold": list(SCORE_THRESHOLDS),
                                                  "min_size_mm": list(MIN_SIZES_MM)}}

    def apply(self, prediction, params: dict, spacing: Sequence[float]):
        prediction.boxes = apply_box_rules(prediction.boxes, params, spacing)
        return prediction
