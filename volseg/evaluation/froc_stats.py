"""FROC curve, sensitivity at given false-positive rates and bootstrap intervals of LUNA16 FROC.

Works on the per-scan outcomes of :func:`volseg.evaluation.froc_match.match_scan`
(:class:`~volseg.evaluation.froc_match.ScanMatch`): builds the operating points (false
positives per scan, fraction of nodules detected), reads the sensitivity at each rate
(``"linear"`` or ``"step"`` interpolation) and gives percentile bootstrap intervals over scans.
The definitions are in :mod:`volseg.evaluation.froc`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from volseg.evaluation.froc_match import ScanMatch

LUNA16_FP_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
Interpolation = Literal["linear", "step"]
_CHUNK_ELEMENTS = 2_000_000  # bootstrap work is split to keep (resamples × entries) arrays small

__all__ = ["LUNA16_FP_RATES", "FrocCurve", "Interpolation", "bootstrap_froc", "froc_curve", "sensitivity_at"]


@dataclass(frozen=True)
class FrocCurve:
    """Operating points of a FROC curve, from the highest threshold down.

    Attributes:
        fps_per_scan: (p,) average false positives per scan, non-decreasing, ``[0] = 0``.
        sensitivity: (p,) fraction of nodules detected, non-decreasing (NaN without nodules).
        thresholds: (p,) the probability threshold of each point, ``[0] = +inf``.
    """

    fps_per_scan: np.ndarray
    sensitivity: np.ndarray
    thresholds: np.ndarray


@dataclass(frozen=True)
class _Entries:
    """Scored entries of all scans, sorted by score (descending), with their tie-group ends."""

    scores: np.ndarray
    is_tp: np.ndarray
    scan: np.ndarray
    ends: np.ndarray
    nodules_per_scan: np.ndarray

    @classmethod
    def of(cls, matches: Sequence[ScanMatch]) -> _Entries:
        parts = []
        for i, m in enumerate(matches):
            hit = m.nodule_scores[~np.isnan(m.nodule_scores)]
            parts.append((hit, np.ones(hit.size, bool), np.full(hit.size, i)))
            parts.append((m.fp_scores, np.zeros(m.fp_scores.size, bool), np.full(m.fp_scores.size, i)))
        scores, is_tp, scan = (np.concatenate([p[j] for p in parts] or [np.empty(0)]) for j in range(3))
        order = np.argsort(-scores, kind="stable")
        scores, is_tp, scan = scores[order], is_tp[order].astype(bool), scan[order].astype(np.intp)
        ends = np.flatnonzero(np.append(scores[1:] != scores[:-1], True)) if scores.size else np.empty(0, np.intp)
        n_nodules = np.array([m.nodule_scores.size for m in matches], dtype=np.float64)
        return cls(scores, is_tp, scan, ends, n_nodules)


def _operating_points(entries: _Entries, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FP rates and sensitivities (B, p) of B weightings of the scans (weights: (B, n_scans) counts)."""
    w = weights[:, entries.scan]
    tp = np.cumsum(w * entries.is_tp, axis=1)[:, entries.ends]
    fp = np.cumsum(w * ~entries.is_tp, axis=1)[:, entries.ends]
    zero = np.zeros((len(weights), 1))
    fps = np.hstack([zero, fp / weights.shape[1]])
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = np.hstack([zero, tp]) / (weights @ entries.nodules_per_scan)[:, None]
    return fps, sens


def _read_rows(fps: np.ndarray, sens: np.ndarray, rates: Sequence[float], interpolation: Interpolation) -> np.ndarray:
    """Sensitivity (B, len(rates)) of each row's curve at each rate; rows vectorised."""
    rows = np.arange(len(fps))
    last = fps.shape[1] - 1
    out = np.empty((len(fps), len(rates)))
    for i, r in enumerate(rates):
        j = (fps <= r).sum(axis=1) - 1  # last point with a rate <= r (fps[:, 0] = 0 <= r)
        s = sens[rows, j]
        if interpolation == "linear":
            k = np.minimum(j + 1, last)
            gap = fps[rows, k] - fps[rows, j]  # > 0 unless k == j
            frac = np.divide(r - fps[rows, j], gap, out=np.zeros(len(fps)), where=k > j)
            s = s + frac * (sens[rows, k] - s)
        out[:, i] = s
    return out


def _check(fp_rates: Sequence[float], interpolation: str) -> None:
    if interpolation not in ("linear", "step"):
        raise ValueError(f"interpolation must be 'linear' or 'step', got {interpolation!r}")
    if len(fp_rates) == 0 or min(fp_rates) < 0:
        raise ValueError(f"fp_rates must be non-empty and >= 0, got {tuple(fp_rates)}")


def froc_curve(matches: Sequence[ScanMatch]) -> FrocCurve:
    """The FROC curve of a set of scans (one :class:`ScanMatch` per scan, all scans included).

    Raises:
        ValueError: ``matches`` is empty.
    """
    if not matches:
        raise ValueError("no scans to evaluate")
    entries = _Entries.of(matches)
    fps, sens = _operating_points(entries, np.ones((1, len(matches))))
    return FrocCurve(fps[0], sens[0], np.concatenate([[np.inf], entries.scores[entries.ends]]))


def sensitivity_at(curve: FrocCurve, fp_rates: Sequence[float] = LUNA16_FP_RATES,
                   interpolation: Interpolation = "linear") -> np.ndarray:
    """Sensitivity of ``curve`` at each average number of false positives per scan in ``fp_rates``.

    ``"linear"`` equals ``np.interp(fp_rates, curve.fps_per_scan, curve.sensitivity)``;
    ``"step"`` is the best operating point with at most that many false positives per scan.
    """
    _check(fp_rates, interpolation)
    return _read_rows(curve.fps_per_scan[None], curve.sensitivity[None], fp_rates, interpolation)[0]


def bootstrap_froc(matches: Sequence[ScanMatch], fp_rates: Sequence[float] = LUNA16_FP_RATES, *,
                   n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0,
                   interpolation: Interpolation = "linear") -> tuple[tuple[float, float], np.ndarray]:
    """Percentile bootstrap intervals of the CPM and of the sensitivities, resampling scans.

    Each resample draws ``len(matches)`` scans with replacement (a scan drawn twice counts twice,
    its nodules and false positives included). Resamples without nodules are left out.

    Args:
        matches: One :class:`ScanMatch` per scan.
        fp_rates: Rates at which the sensitivity is read; the CPM is their mean.
        n_resamples: Number of resamples.
        confidence: Coverage of the intervals, e.g. 0.95.
        seed: Seed of ``numpy.random.default_rng``: the same seed gives the same intervals.
        interpolation: ``"linear"`` or ``"step"`` (see :mod:`volseg.evaluation.froc`).

    Returns:
        ``((cpm_low, cpm_high), sensitivity_ci)`` with ``sensitivity_ci`` of shape (len(fp_rates), 2).
    """
    _check(fp_rates, interpolation)
    if not matches or n_resamples < 1 or not 0 < confidence < 1:
        raise ValueError(f"need scans, n_resamples >= 1 and 0 < confidence < 1, got {len(matches)} scans, "
                         f"{n_resamples}, {confidence}")
    entries, n = _Entries.of(matches), len(matches)
    draws = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    chunk = max(1, _CHUNK_ELEMENTS // max(entries.scores.size, n))
    sens = []
    for start in range(0, n_resamples, chunk):
        d = draws[start:start + chunk]
        offsets = (d + n * np.arange(len(d))[:, None]).ravel()
        weights = np.bincount(offsets, minlength=len(d) * n).reshape(len(d), n).astype(np.float64)
        sens.append(_read_rows(*_operating_points(entries, weights), fp_rates, interpolation))
    sens = np.concatenate(sens)
    q = (50 * (1 - confidence), 50 * (1 + confidence))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all resamples without nodules: NaN
        cpm_ci = np.nanpercentile(sens.mean(axis=1), q)
        sens_ci = np.nanpercentile(sens, q, axis=0).T
    return (float(cpm_ci[0]), float(cpm_ci[1])), sens_ci
