"""Conformal p-values of a case's shift scores against in-distribution cases.

For n calibration cases that are exchangeable with an in-distribution test case (cases no
network of the model was trained on, scored the same way), the p-value
``(1 + #{calibration score ≥ test score}) / (n + 1)`` satisfies P(p ≤ α) ≤ α: flagging at
``p ≤ α`` raises a false alarm on at most a fraction α of in-distribution cases, whatever the
scores' distribution. Its smallest value is 1 / (n + 1): fewer than 1/α − 1 calibration
cases can never flag at level α.

:func:`combined_pvalue` tests all scores at once with one such p-value: each score is
standardized by the median and median absolute deviation of the calibration cases together
with the test case (a function symmetric in the n + 1 cases, so exchangeability holds), and
the case's largest standardized score is ranked.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


def conformal_pvalue(calibration: Sequence[float], score: float) -> float:
    """``(1 + #{c ≥ score}) / (n + 1)``: small when ``score`` is larger than most of ``calibration``."""
    cal = np.asarray(calibration, dtype=np.float64)
    return float((1 + np.count_nonzero(cal >= score)) / (cal.size + 1))


def smallest_pvalue(n: int) -> float:
    """The smallest p-value ``n`` calibration cases allow: 1 / (n + 1)."""
    return 1.0 / (n + 1)


def combined_pvalue(calibration: Mapping[str, Sequence[float]], scores: Mapping[str, float]) -> float | None:
    """One conformal p-value for several scores (larger = more shifted).

    Args:
        calibration: Score name → the n calibration cases' scores (same case order in each).
        scores: The test case's scores; only names present in both are used.

    Returns:
        The p-value, or None when no score is shared or there are no calibration cases.
    """
    names = [k for k in scores if k in calibration and len(calibration[k]) > 0]
    if not names:
        return None
    bag = np.array([[*calibration[k], scores[k]] for k in names], dtype=np.float64)  # (S, n + 1)
    med = np.median(bag, axis=1, keepdims=True)
    mad = np.median(np.abs(bag - med), axis=1, keepdims=True)
    spread = np.maximum(mad, 1e-12 * np.maximum(np.abs(med), 1.0))
    combined = ((bag - med) / spread).max(axis=0)  # (n + 1,): the test case last
    return conformal_pvalue(combined[:-1], combined[-1])
