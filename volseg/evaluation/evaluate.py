"""``evaluate_folders``: score a folder of predictions against a folder of references.

Reads ``PRED/CASE.nii.gz`` and ``REF/CASE.nii.gz`` pairs, scores them in a process pool
with :func:`~volseg.evaluation.case.evaluate_case`, and writes ``summary.json``,
``cases.csv`` and ``plots/`` to the output folder. A case whose files cannot be read, whose
grids differ or whose labels are not declared is recorded as failed with the reason;
cases found on only one side are listed as missing. Neither stops the other cases. A
reference without a prediction is scored as if the prediction were empty (status
``missing``), so a missing prediction lowers the means instead of leaving them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from volseg.errors import VolsegError
from volseg.parallel import process_pool
from volseg.evaluation.case import evaluate_case
from volseg.evaluation.cases import pair_cases, read_pair
from volseg.evaluation.labels import (
    check_values,
    labels_from_dataset,
    labels_from_values,
    mask_of,
    nonzero_values,
)
from volseg.evaluation.lesions import LesionConfig
from volseg.evaluation.summary import foreground_mean, summarize_label

log = logging.getLogger(__name__)

FORMAT = {"format": "volseg-evaluation", "version": 1}
MISSING_PREDICTION = "no prediction file; scored as an empty prediction"


def is_scored(case: dict) -> bool:
    """True for a case in the means: scored from both files (``ok``) or without a prediction (``missing``)."""
    return case["status"] in ("ok", "missing")


def evaluate_folders(pred_dir: str | os.PathLike, ref_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                     dataset_dir: str | os.PathLike | None = None,
                     regions: dict[str, tuple[int, ...]] | None = None, tolerance_mm: float = 1.0,
                     lesion_wise: bool | None = None, lesion_cfg: LesionConfig | None = None,
                     num_workers: int = 2, worst: int = 3, images_dir: str | os.PathLike | None = None,
                     plots: bool = True) -> dict:
    """Score every case of ``pred_dir`` against ``ref_dir`` and write the report.

    Args:
        pred_dir: Folder of predicted label maps ``CASE.nii.gz`` (or ``.nii``).
        ref_dir: Folder of reference label maps with the same names.
        out_dir: Output folder for ``summary.json``, ``cases.csv`` and ``plots/``.
        dataset_dir: Dataset folder whose ``dataset.json`` declares the labels (and regions,
            as lists). Without it every non-zero value found in a case is scored as a label
            named by its value, and no value counts as undeclared.
        regions: Extra regions, name → label values (scored as their union).
        tolerance_mm: Normalized surface Dice tolerance in mm.
        lesion_wise: Add lesion-wise metrics. ``None``: on when the dataset's task is
            "longitudinal".
        lesion_cfg: Lesion matching settings when they are on (default :class:`LesionConfig()`).
        num_workers: Worker processes; 0 or 1 scores in this process.
        worst: Overlay figures of the ``worst`` lowest-Dice cases per label (0: none).
        images_dir: Optional folder of images (``CASE_0000.nii.gz`` or ``CASE.nii.gz``)
            shown under the overlays.
        plots: Write the PNG figures.

    Returns:
        The summary, as written to ``summary.json`` (NaN where JSON has ``null``).

    Raises:
        VolsegError: A folder or ``dataset.json`` is missing or invalid, or a region
            names an undeclared value. Problems with single cases do not raise.

    Example:
        >>> summary = evaluate_folders("pred", "data/labelsTr", "eval", dataset_dir="data")  # doctest: +SKIP
        >>> summary["labels"]["liver"]["mean"]["dice"]  # doctest: +SKIP
        0.953
    """
    from volseg.io.atomic import check_output_dir

    out_dir = check_output_dir(out_dir, [pred_dir, ref_dir])
    labels, declared, lesion_on = _label_setup(dataset_dir, regions or {}, lesion_wise)
    cfg = (lesion_cfg or LesionConfig()) if lesion_on else None
    found = pair_cases(pred_dir, ref_dir)
    for side, ids in (("prediction", found.missing_pred), ("reference", found.missing_ref)):
        if ids:
            log.warning("%d case(s) without a %s: %s", len(ids), side, ", ".join(ids[:10]))
    pairs = sorted([*found.pairs, *((c, None, r) for c, r in found.unpredicted)], key=lambda job: job[0])
    jobs = [(c, p, r, labels, dict(regions or {}), declared, tolerance_mm, cfg) for c, p, r in pairs]
    cases = _run(jobs, num_workers)
    labels = _fill_labels(cases, labels, regions or {}, tolerance_mm, cfg)
    summary = _summary(cases, labels, found, pred_dir, ref_dir, dataset_dir, tolerance_mm, cfg)
    from volseg.evaluation.report import write_case_csv, write_summary

    out_dir.mkdir(parents=True, exist_ok=True)
    write_case_csv(out_dir / "cases.csv", cases, cfg is not None)
    if plots and any(is_scored(c) for c in cases):
        _write_plots(out_dir / "plots", cases, labels, tolerance_mm, worst, images_dir)
    write_summary(out_dir / "summary.json", summary)
    return summary


def _label_setup(dataset_dir, regions, lesion_wise):
    if dataset_dir is None:
        return None, None, bool(lesion_wise)
    labels, task, declared = labels_from_dataset(dataset_dir)
    for name, values in regions.items():
        extra = sorted(set(values) - declared)
        if extra:
            raise VolsegError(Path(dataset_dir) / "dataset.json",
                              f"region {name!r} uses label value(s) {extra} not declared in labels")
    labels.update(regions)
    on = lesion_wise if lesion_wise is not None else task == "longitudinal"
    return labels, declared, bool(on)


def _run(jobs: list[tuple], num_workers: int) -> list[dict]:
    if num_workers <= 1 or len(jobs) <= 1:
        return [score_case_files(*job) for job in jobs]
    with process_pool(min(num_workers, len(jobs))) as pool:
        return list(pool.map(score_case_files, *zip(*jobs)))


def score_case_files(case_id: str, pred_path: Path | None, ref_path: Path, labels: dict | None, regions: dict,
                     declared: set[int] | None, tolerance_mm: float, lesion_cfg: LesionConfig | None) -> dict:
    """Score one case from its files; a problem is recorded as ``status: failed`` with the reason.

    Without a prediction (``pred_path`` None) the case is scored against an empty prediction
    and recorded as ``status: missing``.
    """
    record = {"case": case_id, "status": "ok", "pred": None if pred_path is None else str(pred_path),
              "ref": str(ref_path)}
    if pred_path is None:
        record.update(status="missing", error=MISSING_PREDICTION)
    try:
        pred, ref, geometry = read_pair(pred_path, ref_path)
        ref_values, pred_values = nonzero_values(ref), nonzero_values(pred)
        if declared is not None:
            check_values(ref_values, declared, ref_path)
            if pred_path is not None:
                check_values(pred_values, declared, pred_path)
        if labels is None:  # no dataset.json: score every value found on either side
            labels = labels_from_values(ref_values | pred_values, regions)
        record["spacing"] = list(geometry.spacing)
        record["metrics"] = evaluate_case(pred, ref, geometry.spacing, labels, tolerance_mm, lesion_cfg)
    except VolsegError as e:
        log.error("case %s failed: %s", case_id, e)
        return {**record, "status": "failed", "error": str(e)}
    log.debug("scored %s", case_id)
    return record


def _fill_labels(cases: list[dict], labels, regions, tolerance_mm, cfg) -> dict:
    """Give every scored case an entry for every label (an absent label is empty on both sides).

    Returns the labels and regions scored, name → value(s).
    """
    import numpy as np

    if labels is None:
        values = sorted({int(n) for c in cases if is_scored(c) for n in c["metrics"] if n not in regions})
        labels = labels_from_values(values, regions)
    empty = np.zeros((1, 1, 1), np.uint8)
    for case in cases:
        if not is_scored(case):
            continue
        missing = {n: v for n, v in labels.items() if n not in case["metrics"]}
        if missing:
            blank = evaluate_case(empty, empty, case["spacing"], missing, tolerance_mm, cfg)
            case["metrics"] = {n: case["metrics"].get(n, blank.get(n)) for n in labels}
    return labels


def _summary(cases, labels, found, pred_dir, ref_dir, dataset_dir, tolerance_mm, cfg) -> dict:
    ok = [c for c in cases if c["status"] == "ok"]
    scored = [c for c in cases if is_scored(c)]
    n_missing = len(scored) - len(ok)
    per_label = {n: summarize_label([c["metrics"][n] for c in scored], n_missing) for n in labels}
    failed = [c for c in cases if c["status"] == "failed"]
    return {
        **FORMAT,
        "settings": {"pred_dir": str(pred_dir), "ref_dir": str(ref_dir),
                     "dataset_dir": None if dataset_dir is None else str(dataset_dir),
                     "tolerance_mm": tolerance_mm, "lesion_wise": cfg.to_dict() if cfg else None,
                     "labels": {n: list(v) if isinstance(v, tuple) else v for n, v in labels.items()}},
        "counts": {"evaluated": len(ok), "failed": len(failed),
                   "missing_predictions": len(found.missing_pred), "missing_references": len(found.missing_ref)},
        "missing": {"predictions": list(found.missing_pred), "references": list(found.missing_ref)},
        "failed": [{"case": c["case"], "error": c["error"]} for c in failed],
        "foreground_mean": foreground_mean(per_label, [n for n, v in labels.items() if isinstance(v, int)]),
        "labels": per_label,
        "cases": cases,
    }


def _write_plots(folder: Path, cases, labels: dict, tolerance_mm, worst, images_dir) -> None:
    from volseg.evaluation.plots import plot_distributions, plot_overlay

    plot_distributions(cases, list(labels), folder / "scores.png", tolerance_mm)
    ok = [c for c in cases if c["status"] == "ok"]
    for name, value in labels.items():
        scored = [c for c in ok if c["metrics"][name]["dice"] < 1.0]  # NaN compares False: skipped
        for case in sorted(scored, key=lambda c: c["metrics"][name]["dice"])[:worst]:
            pred, ref, geometry = read_pair(Path(case["pred"]), Path(case["ref"]))
            m = case["metrics"][name]
            title = f"{case['case']} · {name} · Dice {m['dice']:.3f} · HD95 {m['hd95_mm']:.1f} mm"
            plot_overlay(mask_of(pred, value), mask_of(ref, value), geometry.spacing, title,
                         folder / "worst" / f"{_safe(name)}__{_safe(case['case'])}.png",
                         _image(images_dir, case["case"], geometry))


def _image(images_dir, case_id: str, geometry):
    if images_dir is None:
        return None
    from volseg.io.nifti import read_image

    for name in (f"{case_id}_0000.nii.gz", f"{case_id}_0000.nii", f"{case_id}.nii.gz", f"{case_id}.nii"):
        path = Path(images_dir) / name
        if path.is_file():
            image, geom = read_image(path)
            return image if geom.shape == geometry.shape else None
    return None


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)
