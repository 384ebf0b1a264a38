"""Aggregation of per-case scores into per-label statistics.

Means, medians and standard deviations use only finite values; ``n`` counts them and
``n_undefined`` counts the cases whose value was NaN (see ``docs/evaluate.md``).
"""

from __future__ import annotations

import math

import numpy as np

from volseg.evaluation.case import METRICS
from volseg.evaluation.lesions import detection_scores

LESION_COUNTS = ("n_ref", "n_pred", "tp_ref", "tp_pred", "fn", "fp", "fp_volume_mm3")


def stats(values) -> dict[str, float | int]:
    """Mean, median, std, min and max of the finite ``values``, with counts."""
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    ok = v[np.isfinite(v)]
    nan = float("nan")
    if ok.size == 0:
        return {"mean": nan, "median": nan, "std": nan, "min": nan, "max": nan, "n": 0, "n_undefined": int(v.size)}
    return {"mean": float(ok.mean()), "median": float(np.median(ok)), "std": float(ok.std()),
            "min": float(ok.min()), "max": float(ok.max()), "n": int(ok.size), "n_undefined": int(v.size - ok.size)}


def summarize_label(per_case: list[dict], missing_predictions: int = 0) -> dict:
    """Statistics of one label or region over the cases' metric dicts (from ``evaluate_case``).

    Args:
        per_case: One metric dict per case.
        missing_predictions: How many of those cases had no prediction and were scored
            against an empty one (reported in ``counts``).
    """
    out = {
        "mean": {},
        "stats": {m: stats(c[m] for c in per_case) for m in METRICS},
        "counts": {
            "cases": len(per_case),
            "both_empty": sum(c["ref_empty"] and c["pred_empty"] for c in per_case),
            "ref_empty_only": sum(c["ref_empty"] and not c["pred_empty"] for c in per_case),
            "pred_empty_only": sum(c["pred_empty"] and not c["ref_empty"] for c in per_case),
            "missing_predictions": missing_predictions,
        },
    }
    out["stats"]["abs_volume_diff_mm3"] = stats(abs(c["volume_diff_mm3"]) for c in per_case)
    out["mean"] = {m: s["mean"] for m, s in out["stats"].items()}
    lesions = [c["lesions"] for c in per_case if "lesions" in c]
    if lesions:
        out["lesions"] = summarize_lesions(lesions)
    return out


def summarize_lesions(per_case: list[dict]) -> dict:
    """Pooled lesion detection over cases, per-case means, and false positives on lesion-free cases.

    ``pooled`` sums lesion counts over all cases before dividing (every lesion weighs the
    same); ``mean_per_case`` averages the per-case scores (every case weighs the same).
    """
    total = {k: sum(c[k] for c in per_case) for k in LESION_COUNTS}
    pooled = detection_scores(total["n_ref"], total["n_pred"], total["tp_ref"], total["tp_pred"],
                              total["fp_volume_mm3"])
    empty = [c for c in per_case if c["n_ref"] == 0]
    return {
        "pooled": pooled,
        "mean_per_case": {m: stats(c[m] for c in per_case)["mean"] for m in ("sensitivity", "precision", "f1")},
        "reference_empty_cases": {
            "cases": len(empty),
            "cases_with_fp": sum(c["fp"] > 0 for c in empty),
            "fp_lesions": sum(c["fp"] for c in empty),
            "fp_lesions_per_case": (sum(c["fp"] for c in empty) / len(empty)) if empty else float("nan"),
            "fp_volume_mm3": float(sum(c["fp_volume_mm3"] for c in empty)),
        },
    }


def foreground_mean(labels: dict[str, dict], names: list[str]) -> dict[str, float]:
    """Mean over ``names`` of the per-label means of Dice, surface Dice and HD95 (NaN labels skipped)."""
    out = {}
    for m in ("dice", "surface_dice", "hd95_mm"):
        vals = [labels[n]["mean"][m] for n in names if n in labels and math.isfinite(labels[n]["mean"][m])]
        out[m] = float(np.mean(vals)) if vals else float("nan")
    return out
