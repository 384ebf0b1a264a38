"""Matching the point detections of one scan to its nodules, for the LUNA16 FROC analysis.

Points are float (n, 4) arrays: world x, y, z in mm (ITK's physical (x, y, z) order, as
LUNA16's CSV files store it) and a fourth value, the diameter in mm for nodules and excluded
findings, the probability for candidates. This module turns inputs into such arrays, applies
the per-scan candidate cap and decides hits, misses, ignored candidates and false positives;
the rules are in :mod:`volseg.evaluation.froc`. Nothing here reads files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_CANDIDATES = 100
UNSIZED_DIAMETER_MM = 10.0

__all__ = ["MAX_CANDIDATES", "UNSIZED_DIAMETER_MM", "ScanMatch", "cap_candidates", "match_scan", "to_points"]


@dataclass(frozen=True)
class ScanMatch:
    """Outcome of matching the candidates of one scan to its nodules.

    Attributes:
        nodule_scores: (n_nodules,) highest probability among the candidates hitting each nodule,
            NaN where none hits it.
        fp_scores: (n_fp,) probabilities of the false-positive candidates.
        n_ignored: Candidates ignored because they hit an excluded finding only.
    """

    nodule_scores: np.ndarray
    fp_scores: np.ndarray
    n_ignored: int = 0


def to_points(rows, what: str = "points") -> np.ndarray:
    """Points as a float (n, 4) array: world x, y, z in mm and a value (diameter mm or probability).

    Args:
        rows: An (n, 4) array-like, or a sequence of ``(centre_xyz_mm, value)`` pairs.
        what: Names the points in error messages.

    Raises:
        ValueError: Wrong shape, or a value that is not a finite number.
    """
    if not isinstance(rows, np.ndarray):
        rows = list(rows)
        first = rows[0] if rows else None
        if isinstance(first, (list, tuple)) and len(first) == 2 and np.ndim(first[0]) == 1:  # (centre, value)
            rows = [(*centre, value) for centre, value in rows]
    arr = np.asarray(rows, dtype=np.float64)
    if arr.size == 0:
        return np.empty((0, 4))
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{what}: expected rows of x, y, z (mm) and a value, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{what}: row {int(np.flatnonzero(~np.isfinite(arr).all(1))[0])} is not finite")
    return arr


def cap_candidates(candidates: np.ndarray, max_candidates: int = MAX_CANDIDATES) -> np.ndarray:
    """Keep the candidates of one scan that have at most ``max_candidates`` rivals >= themselves.

    Args:
        candidates: (n, 4) x, y, z (mm), probability.
        max_candidates: The cap; ties across it are all dropped (LUNA16's rule).

    Returns:
        The kept rows, in their original order.
    """
    if len(candidates) <= max_candidates:
        return candidates
    p = candidates[:, 3]
    at_least = len(p) - np.searchsorted(np.sort(p), p, side="left")  # candidates with probability >= p
    return candidates[at_least <= max_candidates]


def _radius_sq(points: np.ndarray) -> np.ndarray:
    d = np.where(points[:, 3] < 0, UNSIZED_DIAMETER_MM, points[:, 3])
    return (d / 2.0) ** 2


def _hits(candidates: np.ndarray, findings: np.ndarray) -> np.ndarray:
    """Bool (n_candidates, n_findings): candidate strictly within the finding's radius."""
    d2 = ((candidates[:, None, :3] - findings[None, :, :3]) ** 2).sum(axis=-1)
    return d2 < _radius_sq(findings)[None, :]


def match_scan(nodules: np.ndarray, candidates: np.ndarray, excluded: np.ndarray | None = None) -> ScanMatch:
    """Match the (already capped) candidates of one scan to its nodules and excluded findings.

    Args:
        nodules: (k, 4) nodule centres x, y, z (mm) and diameters (mm).
        candidates: (m, 4) candidate positions x, y, z (mm) and probabilities.
        excluded: (e, 4) excluded findings, as ``nodules``; ``None`` for none.

    Returns:
        The nodule scores, the false-positive scores and the number of ignored candidates.
    """
    nodules, candidates = to_points(nodules, "nodules"), to_points(candidates, "candidates")
    excluded = to_points(() if excluded is None else excluded, "excluded findings")
    hits = _hits(candidates, nodules)
    scores = np.where(hits, candidates[:, 3:4], -np.inf).max(axis=0, initial=-np.inf)
    scores[~hits.any(axis=0)] = np.nan
    free = ~hits.any(axis=1)
    ignored = free & _hits(candidates, excluded).any(axis=1)
    return ScanMatch(scores, candidates[free & ~ignored, 3].copy(), int(ignored.sum()))
