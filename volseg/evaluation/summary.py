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

    Args:
        per_case: One lesion record per case (from :func:`~volseg.evaluation.lesions.lesion_metrics`).

    Returns:
        * ``pooled``: lesion counts summed over all cases before dividing (every lesion
          weighs the same);
        * ``per_case``: for ``f1``, ``sensitivity`` and ``precision``, the mean over the cases
          where the value is defined (every case weighs the same) and ``cases``, how many
          entered it; ``mean_per_case`` gives the same means alone (kept for older readers);
        * ``lesion_free``: on the cases whose reference has no lesion: ``cases``, ``nFP_mean``
          and ``nFP_total`` (predicted lesions, all false positives there) and ``VFP_mean_mm3``
          (mean total volume of those false positives); NaN when there is no such case;
        * ``count_error``: ``mean`` and ``mean_abs`` over the cases of ``n_pred - n_ref``;
        * ``reference_empty_cases``: the lesion-free cases in the older layout.
    """
    nan = float("nan")
    total = {k: sum(c[k] for c in per_case) for k in LESION_COUNTS}
    pooled = detection_scores(total["n_ref"], total["n_pred"], total["tp_ref"], total["tp_pred"],
                              total["fp_volume_mm3"])
    means = {}
    for m in ("f1", "sensitivity", "precision"):
        s = stats(c[m] for c in per_case)
        means[m] = {"mean": s["mean"], "cases": s["n"]}
    empty = [c for c in per_case if c["n_ref"] == 0]
    errors = np.asarray([c["n_pred"] - c["n_ref"] for c in per_case], dtype=np.float64)
    n_fp = [c["fp"] for c in empty]
    return {
        "pooled": pooled,
        "per_case": means,
        "mean_per_case": {m: means[m]["mean"] for m in ("sensitivity", "precision", "f1")},
        "lesion_free": {
            "cases": len(empty),
            "nFP_mean": float(np.mean(n_fp)) if empty else nan,
            "nFP_total": int(sum(n_fp)) if empty else nan,
            "VFP_mean_mm3": float(np.mean([c["fp_volume_mm3"] for c in empty])) if empty else nan,
        },
        "count_error": {
            "mean": float(errors.mean()) if errors.size else nan,
            "mean_abs": float(np.abs(errors).mean()) if errors.size else nan,
        },
        "reference_empty_cases": {
            "cases": len(empty),
            "cases_with_fp": sum(c["fp"] > 0 for c in empty),
            "fp_lesions": sum(n_fp),
            "fp_lesions_per_case": (sum(n_fp) / len(empty)) if empty else nan,
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
