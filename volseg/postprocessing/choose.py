"""Choosing post-processing rules on cross-validation predictions.

For each foreground class in turn, candidate rules are tried on every validation case:
keeping the largest component, and removing components below a volume threshold
(fractions of the smallest reference object of that class). A rule is kept only when it
raises the mean score of that class over the cases by more than ``min_gain`` and lowers
no other class; the rules found so far apply while the next class is tried.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from volseg.postprocessing.components import _components, apply_rules

Case = tuple[np.ndarray, np.ndarray, tuple[float, float, float]]  # prediction, reference, spacing (z, y, x)


def dice(pred: np.ndarray, ref: np.ndarray, value: int) -> float:
    """Dice of one label value; 1.0 when both are empty."""
    p, r = pred == value, ref == value
    denom = int(p.sum()) + int(r.sum())
    return 1.0 if denom == 0 else 2.0 * int((p & r).sum()) / denom


def _mean_scores(cases: list[Case], rules: list[dict], values: list[int],
                 score: Callable[[np.ndarray, np.ndarray, int], float]) -> np.ndarray:
    out = np.zeros((len(cases), len(values)))
    for i, (pred, ref, spacing) in enumerate(cases):
        post = apply_rules(pred, rules, spacing)
        out[i] = [score(post, ref, v) for v in values]
    return out.mean(0)


def _smallest_reference_object_mm3(cases: list[Case], value: int) -> float | None:
    sizes = []
    for _, ref, spacing in cases:
        mask = ref == value
        if mask.any():
            _, counts = _components(mask)
            sizes.append(float(counts[1:][counts[1:] > 0].min()) * float(np.prod(spacing)))
    return min(sizes) if sizes else None


def choose_rules(cases: list[Case], values: list[int], min_gain: float = 1e-3,
                 score: Callable[[np.ndarray, np.ndarray, int], float] = dice) -> dict:
    """Pick connected-component rules that improve the validation score.

    Args:
        cases: (prediction, reference, spacing) per validation case, label maps (Z, Y, X).
        values: Foreground label values to consider.
        min_gain: Smallest mean improvement that counts.
        score: Per-case, per-value score (higher is better); Dice by default.

    Returns:
        ``{"rules": [...], "scores_before": {...}, "scores_after": {...}}``.
    """
    rules: list[dict] = []
    before = _mean_scores(cases, rules, values, score)
    current = before.copy()
    for j, v in enumerate(values):
        candidates = [{"kind": "keep_largest", "label": v}]
        smallest = _smallest_reference_object_mm3(cases, v)
        if smallest is not None:
            candidates += [{"kind": "remove_small", "label": v, "min_volume_mm3": round(f * smallest, 3)}
                           for f in (0.25, 0.5, 1.0)]
        best, best_scores = None, current
        for rule in candidates:
            scores = _mean_scores(cases, rules + [rule], values, score)
            others_ok = all(scores[k] >= current[k] - 1e-9 for k in range(len(values)) if k != j)
            if others_ok and scores[j] > best_scores[j] + min_gain:
                best, best_scores = rule, scores
        if best is not None:
            rules.append(best)
            current = best_scores
    return {"rules": rules, "scores_before": dict(zip(map(str, values), before.tolist())),
            "scores_after": dict(zip(map(str, values), current.tolist()))}
