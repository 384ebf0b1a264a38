"""LUNA16-style FROC analysis of point detections: sensitivity against false positives per scan.

Every point is a world coordinate in mm, in (x, y, z) order as ITK gives it
(``TransformContinuousIndexToPhysicalPoint``) and as LUNA16's CSV files store it (``coordX``,
``coordY``, ``coordZ``). Points travel as float (n, 4) arrays: x, y, z (mm) and a fourth value,
the diameter in mm for nodules and excluded findings, the probability for candidates. Nothing
here reads files; :mod:`volseg.evaluation.detection` does.

The rules are those of LUNA16's ``noduleCADEvaluation`` script:

* **Cap.** Per scan, only the ``max_candidates`` (100) most probable candidates are kept: a
  candidate stays when at most 100 candidates of its scan (itself included) have a probability
  >= its own. Candidates tied across the cut are all dropped, so the order of the file does not
  matter.
* **Hit.** A candidate hits a nodule when its distance to the nodule centre is strictly less than
  the nodule's radius (diameter / 2). A negative diameter (``annotations_excluded.csv`` uses -1
  for findings without a size) is taken as 10 mm.
* **Nodules.** A nodule is detected when a candidate hits it; its score is the highest
  probability of the candidates hitting it. Further hits on it are neither true nor false
  positives. A candidate hitting several nodules counts as a hit for each of them.
* **Excluded findings.** A candidate that hits no nodule but lies within the radius of an
  excluded finding is ignored. Excluded findings never count as nodules.
* **False positives.** Every other kept candidate. Scans without nodules count in the number of
  scans and contribute their false positives.

**FROC curve.** For each threshold t (each distinct score, from the highest down) the operating
point is (false positives with probability >= t / scans, detected nodules with score >= t /
nodules), preceded by (0, 0) at t = +inf.

**Sensitivity at a false-positive rate** r (``interpolation``):

* ``"linear"`` (default, LUNA16's ``np.interp`` over the operating points): between the last
  point with a rate <= r and the next one, linearly; where several points share a rate, the last
  (most sensitive) one; beyond the last point, the sensitivity of the last point.
* ``"step"``: the sensitivity of the lowest threshold whose rate is <= r (the best operating
  point that does not exceed r). Never above ``"linear"``.

**CPM**: the mean sensitivity at 1/8, 1/4, 1/2, 1, 2, 4 and 8 false positives per scan.
**Confidence intervals**: percentile bootstrap over scans (scans resampled with replacement,
as many as there are, CPM and sensitivities recomputed on each resample).

Example:
    >>> annotations = {"scan1": [((10.0, 20.0, 30.0), 6.0)]}
    >>> candidates = {"scan1": [((11.0, 20.0, 30.0), 0.9), ((50.0, 0.0, 0.0), 0.4)], "scan2": []}
    >>> result = evaluate_froc(annotations, candidates, n_bootstrap=0)
    >>> float(result.cpm), result.counts["false_positives"]
    (1.0, 1)
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Literal, Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

LUNA16_FP_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
MAX_CANDIDATES = 100
UNSIZED_DIAMETER_MM = 10.0
Interpolation = Literal["linear", "step"]
_CHUNK_ELEMENTS = 2_000_000  # bootstrap work is split to keep (resamples × entries) arrays small


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
class NoduleResult:
    """One annotated nodule and whether it was detected.

    Attributes:
        seriesuid: The scan.
        centre_mm: Nodule centre, world (x, y, z) in mm.
        diameter_mm: Diameter in mm, as annotated.
        hit: Whether a kept candidate hits it.
        score: Highest probability of a candidate hitting it, ``None`` when missed.
    """

    seriesuid: str
    centre_mm: tuple[float, float, float]
    diameter_mm: float
    hit: bool
    score: float | None


@dataclass(frozen=True)
class FrocResult:
    """FROC analysis of a set of scans (see the module docstring for the rules).

    Attributes:
        fp_rates: False positives per scan at which the sensitivity is read.
        sensitivity: (len(fp_rates),) sensitivity at each rate.
        cpm: Mean of ``sensitivity`` (the competition performance metric).
        cpm_ci: (low, high) bootstrap confidence interval of the CPM (NaN without bootstrap).
        sensitivity_ci: (len(fp_rates), 2) bootstrap interval of each sensitivity.
        curve: The FROC curve.
        nodules: One entry per nodule, in scan order then annotation order.
        counts: ``scans``, ``scans_with_nodules``, ``nodules``, ``nodules_hit``, ``candidates``
            (given for the scans scored), ``candidates_kept`` (after the cap),
            ``false_positives``, ``ignored_on_excluded``.
        settings: The options used.
    """

    fp_rates: tuple[float, ...]
    sensitivity: np.ndarray
    cpm: float
    cpm_ci: tuple[float, float]
    sensitivity_ci: np.ndarray
    curve: FrocCurve
    nodules: list[NoduleResult]
    counts: dict[str, int]
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Plain JSON-ready values (NaN and the curve's +inf threshold kept as floats)."""
        keys = [f"{r:g}" for r in self.fp_rates]
        return {
            "cpm": float(self.cpm), "cpm_ci": [float(v) for v in self.cpm_ci],
            "sensitivity": {k: float(v) for k, v in zip(keys, self.sensitivity)},
            "sensitivity_ci": {k: [float(lo), float(hi)] for k, (lo, hi) in zip(keys, self.sensitivity_ci)},
            "counts": dict(self.counts), "settings": dict(self.settings),
            "froc": {"fps_per_scan": self.curve.fps_per_scan.tolist(),
                     "sensitivity": self.curve.sensitivity.tolist(), "thresholds": self.curve.thresholds.tolist()},
        }


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
        interpolation: ``"linear"`` or ``"step"`` (module docstring).

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


def _scan_list(annotations: Mapping, candidates: Mapping, scans: Sequence[str] | None) -> list[str]:
    if scans is None:
        return sorted(set(annotations) | set(candidates))
    scans = list(dict.fromkeys(scans))
    listed = set(scans)
    for name, table in (("annotation", annotations), ("candidate", candidates)):
        outside = [uid for uid in table if uid not in listed and len(table[uid])]
        if outside:
            log.warning("%s(s) of %d scan(s) not in the scan list are ignored, e.g. %s", name, len(outside), outside[0])
    return scans


def evaluate_froc(annotations: Mapping[str, Sequence], candidates: Mapping[str, Sequence],
                  excluded: Mapping[str, Sequence] | None = None, scans: Sequence[str] | None = None, *,
                  max_candidates: int = MAX_CANDIDATES, fp_rates: Sequence[float] = LUNA16_FP_RATES,
                  interpolation: Interpolation = "linear", n_bootstrap: int = 1000, confidence: float = 0.95,
                  seed: int = 0) -> FrocResult:
    """LUNA16 FROC analysis: CPM, sensitivities at ``fp_rates``, bootstrap intervals, per-nodule table.

    Args:
        annotations: seriesuid → nodules, as (n, 4) x, y, z (mm), diameter (mm), or as
            ``((x, y, z), diameter_mm)`` pairs.
        candidates: seriesuid → detections, as (n, 4) x, y, z (mm), probability, or pairs.
        excluded: seriesuid → findings whose hits are ignored (same form as ``annotations``).
        scans: The scans to score, scans without nodules included. Default: every seriesuid of
            ``annotations`` and ``candidates``. Entries of other scans are ignored (with a warning).
        max_candidates: Candidates kept per scan (LUNA16: 100).
        fp_rates: False positives per scan at which the sensitivity is read (CPM: their mean).
        interpolation: ``"linear"`` (LUNA16) or ``"step"``.
        n_bootstrap: Bootstrap resamples for the intervals; 0 for none (intervals NaN).
        confidence: Coverage of the intervals.
        seed: Seed of the bootstrap.

    Returns:
        The :class:`FrocResult`. Without any nodule, sensitivities and CPM are NaN.

    Raises:
        ValueError: No scan to score, points of the wrong shape or not finite, bad options.

    Example:
        >>> r = evaluate_froc({"s1": [((0, 0, 0), 10.0)]}, {"s1": [((1, 0, 0), 0.8)]}, n_bootstrap=0)
        >>> r.nodules[0].hit, r.nodules[0].score
        (True, 0.8)
    """
    _check(fp_rates, interpolation)
    if max_candidates < 1:
        raise ValueError(f"max_candidates must be >= 1, got {max_candidates}")
    uids = _scan_list(annotations, candidates, scans)
    if not uids:
        raise ValueError("no scans to evaluate: no annotations, no candidates and no scan list")
    matches, nodules, counts = _match_scans(uids, annotations, candidates, excluded or {}, max_candidates)
    if not nodules:
        log.warning("no nodules in the %d scan(s) scored: sensitivities are undefined", len(uids))
    curve = froc_curve(matches)
    sens = sensitivity_at(curve, fp_rates, interpolation)
    cpm_ci, sens_ci = (float("nan"), float("nan")), np.full((len(fp_rates), 2), np.nan)
    if n_bootstrap:
        cpm_ci, sens_ci = bootstrap_froc(matches, fp_rates, n_resamples=n_bootstrap, confidence=confidence,
                                         seed=seed, interpolation=interpolation)
    settings = {"max_candidates": max_candidates, "fp_rates": [float(r) for r in fp_rates],
                "interpolation": interpolation,
                "bootstrap": {"resamples": n_bootstrap, "confidence": confidence, "seed": seed}}
    return FrocResult(tuple(float(r) for r in fp_rates), sens, float(np.mean(sens)), cpm_ci, sens_ci, curve,
                      nodules, counts, settings)


def _match_scans(uids: Sequence[str], annotations: Mapping, candidates: Mapping, excluded: Mapping,
                 max_candidates: int) -> tuple[list[ScanMatch], list[NoduleResult], dict[str, int]]:
    """Cap and match every scan; the per-nodule table and the counts of :class:`FrocResult`."""
    matches, nodules, n_given, n_kept = [], [], 0, 0
    for uid in uids:
        nod = to_points(annotations.get(uid, ()), f"annotations of {uid}")
        given = to_points(candidates.get(uid, ()), f"candidates of {uid}")
        kept = cap_candidates(given, max_candidates)
        m = match_scan(nod, kept, to_points(excluded.get(uid, ()), f"excluded findings of {uid}"))
        matches.append(m)
        n_given, n_kept = n_given + len(given), n_kept + len(kept)
        nodules += [NoduleResult(uid, (float(x), float(y), float(z)), float(d), bool(np.isfinite(s)),
                                 float(s) if np.isfinite(s) else None) for (x, y, z, d), s in zip(nod, m.nodule_scores)]
    counts = {"scans": len(uids), "scans_with_nodules": sum(m.nodule_scores.size > 0 for m in matches),
              "nodules": len(nodules), "nodules_hit": sum(n.hit for n in nodules), "candidates": n_given,
              "candidates_kept": n_kept, "false_positives": sum(m.fp_scores.size for m in matches),
              "ignored_on_excluded": sum(m.n_ignored for m in matches)}
    return matches, nodules, counts
