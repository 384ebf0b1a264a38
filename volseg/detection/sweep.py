"""The detection sweep: NMS IoU, WBC IoU, score threshold and minimum box size chosen on held-out predictions.

A :class:`~volseg.tasks.base.Calibrator` (``MODEL/detection_sweep.json``): on every validated
fold, settings are scored by the LUNA16 CPM of the boxes they give, and the best wins. The
IoU thresholds are replayed on the candidates the held-out prediction recorded before its
NMS (``CASE_candidates.npz``, :mod:`volseg.detection.replay`), so the network runs once. As
nnDetection's sweep, one threshold at a time: the NMS IoU at the plan's WBC IoU, then the WBC
IoU at the best NMS IoU (6 replays instead of the 12 of the full grid), the cases replayed in
parallel processes. Each replayed setting then gets every pair (score threshold, minimum
diameter in mm). Ties go to the plan's IoU thresholds (then the nearest), then to the lower
score threshold and the smaller size (which keep more candidates). When a held-out case has
no recorded candidates (validated by an older version), only the threshold and size are
swept, on the ``CASE_boxes.json``.
``predict`` applies the result: the IoUs in the box aggregator
(:meth:`~volseg.tasks.detection.DetectionTask.aggregator`), the rest by
:func:`apply_box_rules`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from volseg.detection.replay import fuse_case, nms_tiles, world_candidates

SCORE_THRESHOLDS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)
MIN_SIZES_MM = (0.0, 2.0, 3.0, 4.0)
NMS_IOUS = (0.3, 0.5, 0.7)       # per tile and pass; the plan's 0.5 in the middle
WBC_IOUS = (0.1, 0.2, 0.3, 0.4)  # both WBC steps; the plan's 0.2


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


def _replayed_rows(job: tuple[str, list[tuple[float, float]]]) -> list[np.ndarray]:
    """For one ``CASE_candidates.npz`` and each (NMS IoU, WBC IoU), the (n, 5) rows of the replayed
    fusion (x, y, z in mm, score, diameter in mm); NMS runs once per NMS IoU (in a worker process)."""
    from volseg.detection.candidates import load_candidates

    path, settings = job
    rec, steps, out = load_candidates(path), {}, []
    for nms, wbc in settings:
        if nms not in steps:
            steps[nms] = nms_tiles(rec, nms)
        out.append(world_candidates(rec, fuse_case(rec, steps[nms], wbc)))
    return out


def best_rules(candidates: dict[str, np.ndarray], annotations: dict, excluded: dict, scans: list[str]) -> tuple:
    """``(cpm, -threshold, -size)`` of the best (score threshold, minimum size) on (n, 5) candidate rows per scan."""
    from volseg.evaluation.froc import evaluate_froc

    results = []
    for thr in SCORE_THRESHOLDS:
        for size in MIN_SIZES_MM:
            kept = {c: v[(v[:, 3] >= thr) & (v[:, 4] >= size)][:, :4] for c, v in candidates.items()}
            r = evaluate_froc(annotations, kept, excluded, scans, n_bootstrap=0)
            results.append((float(r.cpm), -thr, -size))
    return max(results)


class DetectionSweep:
    """NMS IoU, WBC IoU, score threshold and minimum size maximizing the held-out CPM."""

    name = "detection_sweep"

    def __init__(self, plans: dict) -> None:
        self.plans = plans

    def fit(self, validation_dirs: list[Path]) -> dict | None:
        from volseg.detection.candidates import CANDIDATES_SUFFIX, fused_with
        from volseg.errors import ModelError
        from volseg.evaluation.detection import read_points_csv
        from volseg.parallel import map_in_processes

        boxes, records, annotations, excluded, scans = {}, {}, {}, {}, []
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
                    boxes[c] = _case_candidates(folder / f"{c}_boxes.json")
                if (folder / f"{c}{CANDIDATES_SUFFIX}").is_file():
                    records[c] = folder / f"{c}{CANDIDATES_SUFFIX}"
        if not scans or not any(len(v) for v in annotations.values()):
            return None
        if sorted(records) != sorted(boxes) or not records:   # not every predicted case recorded its candidates
            cpm, thr, size = best_rules(boxes, annotations, excluded, scans)
            return {"score_threshold": -thr, "min_size_mm": -size, "cpm": round(cpm, 4), "num_cases": len(scans),
                    "grid": {"score_threshold": list(SCORE_THRESHOLDS), "min_size_mm": list(MIN_SIZES_MM)}}
        used = {fused_with(path) for path in records.values()}
        if len(used) != 1:
            raise ModelError(validation_dirs[0], f"the held-out cases were fused with different IoU thresholds "
                             f"{sorted(used)}; predict them again with one model")
        (nms0, wbc0), table = used.pop(), {}

        def score(settings: list[tuple[float, float]]) -> None:
            jobs = [(str(records[c]), settings) for c in cases]
            rows = map_in_processes(_replayed_rows, jobs, min(len(jobs), os.cpu_count() or 1), "detection sweep",
                                    progress=False)
            for k, setting in enumerate(settings):
                cpm, thr, size = best_rules({c: r[k] for c, r in zip(cases, rows)}, annotations, excluded, scans)
                prefer = (setting == (nms0, wbc0), -abs(setting[0] - nms0) - abs(setting[1] - wbc0))
                table[setting] = (cpm, *prefer, thr, size)

        # one threshold at a time, as nnDetection sweeps: NMS at the plan's WBC, then WBC at the best NMS
        cases = sorted(records)
        score([(nms, wbc0) for nms in NMS_IOUS])
        nms = max((k for k in table), key=lambda k: table[k])[0]
        score([(nms, wbc) for wbc in WBC_IOUS if (nms, wbc) not in table])
        (nms, wbc), (cpm, _, _, thr, size) = max(table.items(), key=lambda kv: kv[1])
        return {"nms_iou": nms, "wbc_iou": wbc, "score_threshold": -thr, "min_size_mm": -size,
                "cpm": round(cpm, 4), "num_cases": len(scans), "predicted_with": {"nms_iou": nms0, "wbc_iou": wbc0},
                "grid": {"nms_iou": list(NMS_IOUS), "wbc_iou": list(WBC_IOUS),
                         "score_threshold": list(SCORE_THRESHOLDS), "min_size_mm": list(MIN_SIZES_MM)},
                "table": [{"nms_iou": n, "wbc_iou": w, "cpm": round(k[0], 4), "score_threshold": -k[3],
                           "min_size_mm": -k[4]} for (n, w), k in table.items()]}

    def apply(self, prediction, params: dict, spacing: Sequence[float]):
        prediction.boxes = apply_box_rules(prediction.boxes, params, spacing)
        return prediction
