"""Conformal Risk Control (Angelopoulos, Bates, Fisch, Lei and Schuster, 2022).

Convention: ``losses`` is a float matrix of shape (n, G), n calibration cases by G grid
settings, with columns ordered from the safest setting (index 0, lowest risk) to the most
permissive (index G-1), and every loss in [0, B] (``bound``).  The result is the most
permissive grid index whose guarantee holds; the caller maps it to its threshold.

CRC needs each case's loss to be non-decreasing along the grid.  It then picks

    j_hat = max{ j : (n * R_n(k) + B) / (n + 1) <= alpha for every k <= j },

where R_n(k) is the mean calibration loss of column k.  This is the paper's
lambda_hat = inf{lambda : n/(n+1) R_n(lambda) + B/(n+1) <= alpha} with the grid read from
the most permissive end, and for exchangeable cases it gives E[L_{n+1}(j_hat)] <= alpha.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


class NotMonotoneError(ValueError):
    """A case's loss decreases somewhere along the grid, so CRC's guarantee does not apply."""


class NoValidThresholdError(ValueError):
    """No grid setting meets the requested risk level on the calibration cases given."""


def _check_level(name: str, value: float) -> float:
    """``value`` as a float, or a one-line ValueError unless it lies strictly inside (0, 1)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}") from None
    if not 0.0 < v < 1.0:
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {value!r}")
    return v


def _check_losses(losses: np.ndarray, bound: float) -> np.ndarray:
    """``losses`` as a float (n, G) array with n, G >= 1 and finite entries in [0, bound]."""
    b = float(bound)
    if not (math.isfinite(b) and b > 0):
        raise ValueError(f"bound must be a finite positive number, got {bound!r}")
    arr = np.asarray(losses, dtype=float)
    if arr.ndim != 2:
        raise ValueError(f"losses must be a 2-D (cases, grid settings) array, got shape {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"losses needs at least one case and one grid setting, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(f"losses must be finite, got {arr[tuple(bad)]} at case row {bad[0]}, grid index {bad[1]}")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0.0 or hi > b:
        raise ValueError(f"losses must lie in [0, {b:g}] (the bound), got values in [{lo:.6g}, {hi:.6g}]")
    return arr


def check_monotone(losses: np.ndarray, tol: float = 1e-9) -> None:
    """Check that every case's loss is non-decreasing from grid index 0 to G-1.

    Args:
        losses: Float array (n, G), columns ordered from the safest setting to the most permissive.
        tol: Decreases of at most ``tol`` between neighbouring columns are accepted.

    Raises:
        NotMonotoneError: Naming the first case row and the pair of grid indices where the loss falls.
        ValueError: If ``losses`` is not 2-D.
    """
    arr = np.asarray(losses, dtype=float)
    if arr.ndim != 2:
        raise ValueError(f"losses must be a 2-D (cases, grid settings) array, got shape {arr.shape}")
    drops = np.diff(arr, axis=1) < -tol
    if not drops.any():
        return
    row, col = (int(i) for i in np.argwhere(drops)[0])
    n_rows = int(drops.any(axis=1).sum())
    raise NotMonotoneError(
        f"case row {row}: loss falls from {arr[row, col]:.6g} at grid index {col} to {arr[row, col + 1]:.6g} "
        f"at grid index {col + 1} ({n_rows} case row(s) affected); CRC needs a loss that is non-decreasing "
        f"from the safest setting (index 0) to the most permissive; Learn-then-Test (method=\"ltt\") "
        f"handles non-monotone risks")


def min_cases(alpha: float, bound: float = 1.0) -> int:
    """The smallest number of calibration cases n for which CRC can return any grid index.

    Even a column of zero losses has adjusted risk B/(n+1), so n must satisfy B/(n+1) <= alpha.

    Args:
        alpha: Target risk level in (0, 1).
        bound: Upper bound B of the losses.

    Returns:
        The smallest integer n >= 1 with ``bound / (n + 1) <= alpha``; 9 for alpha 0.1 and B = 1.

    Example:
        >>> min_cases(0.1)
        9
    """
    a = _check_level("alpha", alpha)
    b = float(bound)
    if not (math.isfinite(b) and b > 0):
        raise ValueError(f"bound must be a finite positive number, got {bound!r}")
    n = max(1, math.ceil(b / a) - 1)
    while n > 1 and b / n <= a:  # float rounding: step down while n - 1 also qualifies
        n -= 1
    while b / (n + 1) > a:  # ... and up until n qualifies
        n += 1
    return n


@dataclass(frozen=True, eq=False)
class CRCResult:
    """The outcome of :func:`crc_calibrate`.

    Attributes:
        index: The most permissive grid index meeting alpha (columns ordered safest first).
        n: Number of calibration cases.
        alpha: Target expected risk.
        bound: Upper bound B of the losses.
        adjusted: Float array (G,) of (n * R_n + B) / (n + 1) per grid column.
        empirical_risk: Float array (G,) of the mean calibration loss R_n per grid column.
    """

    index: int
    n: int
    alpha: float
    bound: float
    adjusted: np.ndarray
    empirical_risk: np.ndarray

    def to_dict(self) -> dict:
        """A JSON-friendly dict: plain ints, floats and lists."""
        return {"method": "crc", "index": int(self.index), "n": int(self.n), "alpha": float(self.alpha),
                "bound": float(self.bound), "adjusted": [float(v) for v in self.adjusted],
                "empirical_risk": [float(v) for v in self.empirical_risk]}


def crc_calibrate(losses: np.ndarray, alpha: float, bound: float = 1.0, check: bool = True) -> CRCResult:
    """Choose the most permissive grid index whose expected risk is controlled at ``alpha``.

    With adjusted[k] = (n * R_n(k) + B) / (n + 1), the chosen index is the largest j such
    that adjusted[k] <= alpha for every k <= j: the paper's
    lambda_hat = inf{lambda : n/(n+1) R_n(lambda) + B/(n+1) <= alpha} in this index
    convention.  For exchangeable calibration and test cases and a loss that is
    non-decreasing along the grid, E[L_{n+1}(index)] <= alpha.

    Args:
        losses: Float array (n, G) with entries in [0, ``bound``]; columns ordered from the
            safest setting (index 0) to the most permissive (index G-1).
        alpha: Target expected risk, in (0, 1).
        bound: Upper bound B of the losses.
        check: Whether to check that every row is non-decreasing (:func:`check_monotone`).

    Returns:
        A :class:`CRCResult`; map ``result.index`` to the grid's threshold.

    Raises:
        ValueError: On an alpha outside (0, 1) or losses that are not finite and within [0, B].
        NotMonotoneError: If ``check`` and some case's loss decreases along the grid.
        NoValidThresholdError: If even grid index 0 fails, e.g. with fewer than
            :func:`min_cases` calibration cases.

    Example:
        >>> fnr = np.array([[0.0, 0.0, 0.5], [0.0, 0.5, 1.0]] * 10)  # 20 cases, 3 thresholds
        >>> crc_calibrate(fnr, alpha=0.3).index
        1
    """
    a = _check_level("alpha", alpha)
    arr = _check_losses(losses, bound)
    b = float(bound)
    if check:
        check_monotone(arr)
    n = arr.shape[0]
    total = arr.sum(axis=0)
    adjusted = (total + b) / (n + 1)
    ok = np.logical_and.accumulate(adjusted <= a)
    if not ok[0]:
        need = min_cases(a, b)
        if n < need:
            why = f"needs at least {need} calibration cases for alpha {a:g} (bound {b:g})"
        else:
            why = f"even the safest setting (index 0) has adjusted risk {adjusted[0]:.4g} > alpha"
        raise NoValidThresholdError(f"no grid setting meets alpha {a:g} with {n} calibration cases: CRC {why}")
    index = int(np.count_nonzero(ok) - 1)
    empirical = total / n
    adjusted.setflags(write=False)
    empirical.setflags(write=False)
    return CRCResult(index=index, n=n, alpha=a, bound=b, adjusted=adjusted, empirical_risk=empirical)
