"""The shift check of a model folder: per case, its scores, p-values and whether it is flagged.

What the model folder keeps (written by training, see :mod:`volseg.workflow`):

- ``fingerprint.json`` and ``splits.json``: the training cases' statistics
  (:mod:`volseg.shift.statistics`); the reference of a set of folds is the union of their
  training cases (an imported model keeps ``shift_fingerprint.json`` instead, see
  :mod:`volseg.shift.reference`);
- ``fold_K/shift_features.pt``: the fold network's feature reference (:mod:`volseg.shift.features`);
- ``shift.json``: the scores of the out-of-fold cases, each predicted by the fold that did
  not train on it, exactly as ``predict`` scores a new case (:func:`fit_shift_calibration`).

Three scores per case, larger = less like the training data: ``fingerprint`` (largest robust
z-score of a statistic), ``features`` (mean Mahalanobis distance of the tiles' bottleneck
features, averaged over the folds' networks) and ``uncertainty`` (mean expected entropy, or
predictive entropy, over the predicted foreground, nats). Each gets a conformal p-value
against the out-of-fold cases, and :func:`~volseg.shift.pvalues.combined_pvalue` one for all;
a case is flagged when the combined p-value is at most ``alpha``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from volseg.errors import ModelError
from volseg.shift.features import FILE_NAME, FeatureReference
from volseg.shift.pvalues import combined_pvalue, conformal_pvalue, smallest_pvalue
from volseg.shift.reference import load_fingerprint_statistics, read_record
from volseg.shift.statistics import FingerprintReference, case_statistics, format_outside, record_statistics

log = logging.getLogger(__name__)

CALIBRATION_FILE = "shift.json"
FORMAT = "volseg-shift"
SCORES = ("fingerprint", "features", "uncertainty")


def training_cases(model_dir: str | Path, folds: Sequence[str]) -> list[str] | None:
    """Ids of the cases that trained any of ``folds`` (from ``splits.json``), or None without it."""
    path = Path(model_dir) / "splits.json"
    if not path.is_file():
        return None
    splits = json.loads(path.read_text())
    ids: set[str] = set()
    for fold in folds:
        if fold == "all":
            return sorted({c for f in splits for c in (*f["train"], *f["val"])})
        if int(fold) < len(splits):
            ids |= set(splits[int(fold)]["train"])
    return sorted(ids)


def fingerprint_reference(model_dir: str | Path, folds: Sequence[str]) -> FingerprintReference | None:
    """The training statistics of ``folds`` from the model's fingerprint (``fingerprint.json``
    and ``splits.json``, written by ``volseg plan`` and training), else every fold's from
    ``shift_fingerprint.json`` (:mod:`volseg.shift.reference`, written by ``import-nnunet
    --shift-reference``); None when the fingerprint predates whole-image statistics or both
    are missing."""
    path = Path(model_dir) / "fingerprint.json"
    ids = training_cases(model_dir, folds)
    if not path.is_file() or ids is None:
        return load_fingerprint_statistics(model_dir)
    records = {r["case_id"]: r for r in json.loads(path.read_text()).get("cases", [])}
    stats = [record_statistics(records[c]) for c in ids if c in records]
    stats = [s for s in stats if s is not None]
    return FingerprintReference.from_statistics(stats) if stats else None


def load_calibration(model_dir: str | Path) -> dict | None:
    """``MODEL/shift.json``, or None when there is none.

    Raises:
        ModelError: The file is not a shift calibration.
    """
    return read_record(Path(model_dir) / CALIBRATION_FILE, FORMAT, "a volseg shift calibration", "scores")


@dataclass
class ShiftCheck:
    """What a loaded model compares each case with.

    Attributes:
        fingerprint: Training statistics of the loaded folds, or None.
        features: One :class:`FeatureReference` per loaded network, or None when a fold has none.
        calibration: ``shift.json`` (out-of-fold scores), or None: scores are reported, nothing is flagged.
        alpha: Flag a case when its combined p-value is at most this.
    """

    fingerprint: FingerprintReference | None
    features: list[FeatureReference] | None
    calibration: dict | None
    alpha: float = 0.05

    @property
    def calibration_cases(self) -> int:
        return len(self.calibration["cases"]) if self.calibration else 0

    def scores(self, images: np.ndarray, spacing: Sequence[float], labels: np.ndarray | None,
               tile_features: Sequence[np.ndarray | None] | None,
               uncertainty: dict | None) -> tuple[dict, list, dict | None]:
        """``(scores, outside, statistics)`` of one case.

        Args:
            images: float32 (C, Z, Y, X) input image as read.
            spacing: Its (z, y, x) spacing, mm.
            labels: Predicted (Z, Y, X) labels on the input grid (foreground: > 0), or None.
            tile_features: Per loaded network, the (T, D) pooled features of the case's tiles.
            uncertainty: The case's :func:`volseg.inference.uncertainty.case_uncertainty`.

        Returns:
            Score name → value, the fingerprint statistics outside the training range, and
            every measured statistic (:func:`~volseg.shift.statistics.case_statistics`; None
            without a fingerprint reference).
        """
        out: dict[str, float] = {}
        outside: list = []
        stats = None
        if self.fingerprint is not None:
            fg = labels > 0 if labels is not None else None
            stats = case_statistics(images, spacing, fg)
            out["fingerprint"], outside = self.fingerprint.deviation(stats)
        if self.features is not None and tile_features is not None and all(f is not None for f in tile_features):
            out["features"] = float(np.mean([ref.score(f) for ref, f in zip(self.features, tile_features)]))
        if uncertainty is not None:
            out["uncertainty"] = float(uncertainty.get("expected_entropy", uncertainty["entropy"]))
        return out, outside, stats

    def report(self, scores: dict, outside: list, statistics: dict | None = None) -> dict:
        """The case's ``shift`` record of ``summary.json``: ``scores``, ``outside_training_range``,
        the measured ``statistics`` and, when calibrated, ``p_values`` (per score), ``p_value``
        (combined) and ``flagged``."""
        rec: dict = {"scores": {k: round(v, 6) for k, v in scores.items()}, "outside_training_range": outside}
        if statistics is not None:
            rec["statistics"] = {k: round(v, 6) for k, v in statistics.items()}
        if self.calibration:
            cal = self.calibration["scores"]
            rec["p_values"] = {k: round(conformal_pvalue(cal[k], v), 6) for k, v in scores.items() if k in cal}
            p = combined_pvalue(cal, scores)
            rec["p_value"] = None if p is None else round(p, 6)
            rec["flagged"] = p is not None and p <= self.alpha
        return rec


def load_shift_check(model_dir: str | Path, folds: Sequence[str], alpha: float = 0.05) -> ShiftCheck | None:
    """The shift check of ``folds`` of a model folder, or None when the folder keeps no reference."""
    if not 0 < alpha < 1:
        raise ValueError(f"--shift-alpha must be in (0, 1), got {alpha}")
    root = Path(model_dir)
    fingerprint = fingerprint_reference(root, folds)
    paths = [root / f"fold_{f}" / FILE_NAME for f in folds]
    features = [FeatureReference.load(p) for p in paths] if all(p.is_file() for p in paths) else None
    if fingerprint is None and features is None:
        return None
    return ShiftCheck(fingerprint, features, load_calibration(root), alpha)


def describe_flag(case_id: str, rec: dict, alpha: float) -> str:
    """One line naming why a flagged case looks unlike the training data."""
    pv = rec.get("p_values", {})
    worst = min(pv, key=pv.get) if pv else None
    why = [format_outside(o) for o in rec["outside_training_range"][:3]]
    if worst and not why:
        why = [f"{worst} score {rec['scores'][worst]:.3g} (p {pv[worst]:.3g})"]
    return f"{case_id} looks unlike the training data (p {rec['p_value']:.3g} ≤ {alpha:g}): " + "; ".join(why)


def fit_shift_calibration(model_dir: str | Path, summaries: Sequence[str | Path] = (),
                          out_of_fold: bool = True) -> dict | None:
    """Collect in-distribution cases' shift scores into ``MODEL/shift.json``.

    Args:
        model_dir: The model folder.
        summaries: ``summary.json`` files of ``predict`` runs of this model on cases like the
            training data that no fold of it trained on (unlabelled cases will do).
        out_of_fold: Also every ``fold_K/validation/summary.json`` (each held-out case scored
            by the fold that did not train on it).

    Returns:
        The calibration written, or None when no case has shift scores.
    """
    from volseg.io.atomic import write_json

    root = Path(model_dir)
    files = sorted(root.glob("fold_*/validation/summary.json")) if out_of_fold else []
    files += [Path(s) for s in summaries]
    cases, scores, settings = [], {k: [] for k in SCORES}, set()
    for f in files:
        summary = json.loads(f.read_text())
        if f.parent.name != "validation" and Path(summary.get("model", "")).resolve() != root.resolve():
            raise ModelError(f, f"was predicted with {summary.get('model')}, not with {root}")
        settings.add((summary.get("configuration"), bool(summary.get("tta"))))
        for case_id, rec in summary.get("cases", {}).items():
            if rec.get("status") == "done" and "shift" in rec:
                cases.append(case_id)
                for k in SCORES:
                    scores[k].append(rec["shift"]["scores"].get(k))
    if not cases:
        return None
    scores = {k: v for k, v in scores.items() if all(x is not None for x in v)}
    config, tta = sorted(settings)[0]
    source = [*(["out-of-fold"] if out_of_fold else []), *(["predictions"] if summaries else [])]
    data = {"format": FORMAT, "version": 1, "source": " + ".join(source),
            "configuration": config, "tta": tta, "cases": cases, "scores": scores,
            "smallest_p_value": smallest_pvalue(len(cases))}
    write_json(root / CALIBRATION_FILE, data)
    log.info("shift check calibrated on %d in-distribution cases (smallest p-value %.3g)", len(cases),
             data["smallest_p_value"])
    return data


def settings_warning(check: ShiftCheck, tta: bool, config_name: str) -> str | None:
    """Why the p-values may not hold for this run (other TTA or configuration than calibrated,
    too few calibration cases to reach ``alpha``), or None."""
    cal = check.calibration
    if cal is None:
        return "no shift.json in the model folder: shift scores are reported, but no case can be flagged"
    notes = []
    if cal.get("tta") is not None and bool(cal["tta"]) != bool(tta):
        notes.append(f"calibrated {'with' if cal['tta'] else 'without'} mirroring TTA, predicting "
                     f"{'with' if tta else 'without'}")
    if cal.get("configuration") not in (None, config_name):
        notes.append(f"calibrated with configuration {cal['configuration']}, predicting with {config_name}")
    if smallest_pvalue(check.calibration_cases) > check.alpha:
        notes.append(f"{check.calibration_cases} calibration cases cannot give a p-value below "
                     f"{smallest_pvalue(check.calibration_cases):.3g}, so nothing is flagged at --shift-alpha "
                     f"{check.alpha:g}; use at least {int(np.ceil(1 / check.alpha)) - 1} cases or a larger level")
    return "shift check: " + "; ".join(notes) if notes else None
