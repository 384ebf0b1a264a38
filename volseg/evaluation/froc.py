"""LUNA16-style FROC analysis of point detections: sensitivity against false positives per scan.

Every point is a world coordinate in mm, in (x, y, z) order as ITK gives it
(``TransformContinuousIndexToPhysicalPoint``) and as LUNA16's CSV files store it (``coordX``,
``coordY``, ``coordZ``). Points travel as float (n, 4) arrays: x, y, z (mm) and a fourth value,
the diameter in mm for nodules and excluded findings, the probability for candidates. Nothing
here reads files; :mod:`volseg.evaluation.detection` does.

This module runs the whole analysis (:func:`evaluate_froc`); the per-scan matching is in
:mod:`volseg.evaluation.froc_match`, the curve, sensitivities and bootstrap intervals are in
:mod:`volseg.evaluation.froc_stats`, and their public names are importable from here too.

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
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from volseg.evaluation.froc_match import (
    MAX_CANDIDATES,
    UNSIZED_DIAMETER_MM,
    ScanMatch,
    cap_candidates,
    match_scan,
    to_points,
)
from volseg.evaluation.froc_stats import (
    LUNA16_FP_RATES,
    FrocCurve,
    Interpolation,
    _check,
    bootstrap_froc,
    froc_curve,
    sensitivity_at,
)

__all__ = ["LUNA16_FP_RATES", "MAX_CANDIDATES", "UNSIZED_DIAMETER_MM", "FrocCurve", "FrocResult", "Interpolation",
           "NoduleResult", "ScanMatch", "bootstrap_froc", "cap_candidates", "evaluate_froc", "froc_curve",
           "match_scan", "sensitivity_at", "to_points"]

log = logging.getLogger(__name__)


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
