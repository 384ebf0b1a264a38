"""Choosing post-processing rules on cross-validation predictions.

For each foreground class in turn, candidate rules are tried on every validation case:
keeping the largest component, and removing components below a volume threshold
(fractions of the smallest reference object of that class). A rule is kept only when it
raises the mean score of that class over the cases by more than ``min_gain`` and lowers
no other class; the rules found so far apply while the next class is tried.

The score is evaluation's Dice (:func:`volseg.evaluation.overlap.dice_score`), NaN when the
reference and the prediction are both empty. A rule is judged by its mean per-case change
over the cases where the score is defined both with and without it, so an empty/empty case
neither rewards nor punishes a rule: scoring it 1.0 would reward any rule that deletes the
whole prediction of a class on cases without that class by a full point per case. The
reported ``scores_before`` / ``scores_after`` are means over the defined cases, as
``volseg evaluate`` reports them (``None`` where no case defines the score).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from volseg.evaluation.overlap import dice_score
from volseg.postprocessing.components import _components, apply_rules

Case = tuple[np.ndarray, np.ndarray, tuple[float, float, float]]  # prediction, reference, spacing (z, y, x)


def dice(pred: np.ndarray, ref: np.ndarray, value: int) -> float:
    """Dice of one label value of two label maps, as evaluation scores it: NaN when both lack it."""
    return dice_score(pred == value, ref == value)


def _case_scores(cases: list[Case], rules: list[dict], values: list[int],
                 score: Callable[[np.ndarray, np.ndarray, int], float]) -> np.ndarray:
    """Scores (n_cases, n_values) after applying ``rules``; NaN where undefined."""
    out = np.zeros((len(cases), len(values)))
    for i, (pred, ref, spacing) in enumerate(cases):
        post = apply_rules(pred, rules, spacing)
        out[i] = [score(post, ref, v) for v in values]
    return out


def paired_gain(after: np.ndarray, before: np.ndarray) -> np.ndarray:
    """Per value, the mean of ``after - before`` over the cases where both are defined (0 where none is)."""
    diff = after - before
    ok = np.isfinite(diff)
    n = ok.sum(0)
    return np.where(ok, diff, 0.0).sum(0) / np.maximum(n, 1)


def _finite_means(scores: np.ndarray, values: list[int]) -> dict[str, float | None]:
    out = {}
    for j, v in enumerate(values):
        col = scores[:, j][np.isfinite(scores[:, j])]
        out[str(v)] = float(col.mean()) if col.size else None
    return out


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
        score: Per-case, per-value score (higher is better, NaN where undefined); Dice by default.

    Returns:
        ``{"rules": [...], "scores_before": {...}, "scores_after": {...}}``, the scores being
        means over the cases where they are defined, value → mean (``None`` when undefined).
    """
    rules: list[dict] = []
    before = _case_scores(cases, rules, values, score)
    current = before
    for j, v in enumerate(values):
        candidates = [{"kind": "keep_largest", "label": v}]
        smallest = _smallest_reference_object_mm3(cases, v)
        if smallest is not None:
            candidates += [{"kind": "remove_small", "label": v, "min_volume_mm3": round(f * smallest, 3)}
                           for f in (0.25, 0.5, 1.0)]
        best, best_scores, best_gain = None, current, min_gain
        for rule in candidates:
            scores = _case_scores(cases, rules + [rule], values, score)
            gain = paired_gain(scores, current)
            others_ok = all(gain[k] >= -1e-9 for k in range(len(values)) if k != j)
            if others_ok and gain[j] > best_gain:
                best, best_scores, best_gain = rule, scores, gain[j]
        if best is not None:
            rules.append(best)
            current = best_scores
    return {"rules": rules, "scores_before": _finite_means(before, values),
            "scores_after": _finite_means(current, values)}
