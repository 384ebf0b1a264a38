"""Detection scores: LUNA16 FROC from CSV files, and COCO-style average precision of 3D boxes.

* :func:`evaluate_detection_csv` reads LUNA16's ``candidates.csv``, ``annotations.csv`` and
  ``annotations_excluded.csv`` (world x, y, z in mm), scores them with
  :func:`~volseg.evaluation.froc.evaluate_froc` and writes ``summary.json``, ``nodules.csv``
  and ``froc.png`` (each atomically).
* :func:`average_precision` is COCO's AP (101 recall points) for 3D axis-aligned boxes, at an
  IoU threshold of 0.1 by default (as nnDetection reports it).
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from volseg.errors import DatasetError, VolsegError
from volseg.evaluation.froc import MAX_CANDIDATES, FrocResult, Interpolation, evaluate_froc, sensitivity_at

FORMAT = {"format": "volseg-detection-evaluation", "version": 1}
POINT_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ")
IMAGE_SUFFIXES = (".mhd", ".mha", ".nii.gz", ".nii", ".nrrd")


def _boxes(boxes, what: str) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return np.empty((0, 6))
    if arr.ndim != 2 or arr.shape[1] != 6:
        raise ValueError(f"{what}: expected (n, 6) boxes (z0, y0, x0, z1, y1, x1), got shape {arr.shape}")
    if not np.isfinite(arr).all() or (arr[:, 3:] < arr[:, :3]).any():
        raise ValueError(f"{what}: boxes must be finite with z0 <= z1, y0 <= y1 and x0 <= x1")
    return arr


def box_iou_3d(a, b) -> np.ndarray:
    """Intersection over union of every pair of 3D axis-aligned boxes.

    Args:
        a: (n, 6) boxes ``(z0, y0, x0, z1, y1, x1)``: half-open voxel boxes (the voxels
            ``z0 <= k < z1``, so the extent along z is ``z1 - z0`` voxels) or corners in mm; the
            same unit for ``a`` and ``b``.
        b: (m, 6) boxes, the same format.

    Returns:
        float64 (n, m) IoU; 0 where the union is empty.
    """
    a, b = _boxes(a, "boxes a"), _boxes(b, "boxes b")
    lo = np.maximum(a[:, None, :3], b[None, :, :3])
    hi = np.minimum(a[:, None, 3:], b[None, :, 3:])
    inter = np.clip(hi - lo, 0.0, None).prod(axis=-1)
    union = (a[:, 3:] - a[:, :3]).prod(-1)[:, None] + (b[:, 3:] - b[:, :3]).prod(-1)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _match_image(boxes: np.ndarray, scores: np.ndarray, gt: np.ndarray, iou_threshold: float,
                 max_detections: int) -> tuple[np.ndarray, np.ndarray]:
    """COCO's greedy matching in one image: each detection, best first, takes the free box of highest IoU."""
    order = np.argsort(-scores, kind="mergesort")[:max_detections]
    boxes, scores = boxes[order], scores[order]
    iou = box_iou_3d(boxes, gt)
    taken = np.zeros(len(gt), bool)
    tp = np.zeros(len(boxes), bool)
    for i in range(len(boxes)):
        free = np.where(taken, -1.0, iou[i])
        if free.size and free.max() >= iou_threshold:
            taken[int(free.argmax())] = tp[i] = True
    return scores, tp


def average_precision(pred_boxes: Mapping[str, Sequence], pred_scores: Mapping[str, Sequence],
                      gt_boxes: Mapping[str, Sequence], iou_threshold: float = 0.1,
                      max_detections: int = 100) -> float:
    """COCO-style average precision of 3D box detections over a set of images (one class).

    Per image, the ``max_detections`` best detections are matched greedily, highest score first,
    each to the unmatched reference box of highest IoU, when that IoU is >= ``iou_threshold``.
    Over all images, detections are ranked by score; the precision is made non-increasing in
    recall (its upper envelope) and read at the 101 recalls 0, 0.01, ..., 1 (0 beyond the highest
    recall reached); AP is their mean, as ``pycocotools`` computes it.

    Args:
        pred_boxes: image id → (n, 6) detected boxes ``(z0, y0, x0, z1, y1, x1)``, half-open
            voxel boxes or corners in mm (the same unit as ``gt_boxes``).
        pred_scores: image id → (n,) scores of those boxes.
        gt_boxes: image id → (k, 6) reference boxes. Images present in only one mapping count
            (with no detections, or no references).
        iou_threshold: Minimum IoU of a match, in (0, 1].
        max_detections: Detections kept per image.

    Returns:
        AP in [0, 1]; NaN when there is no reference box at all.

    Example:
        >>> average_precision({"a": [[0, 0, 0, 4, 4, 4]]}, {"a": [0.9]}, {"a": [[0, 0, 1, 4, 4, 5]]})
        1.0
    """
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    scores, tps, n_gt = [], [], 0
    for key in dict.fromkeys([*gt_boxes, *pred_boxes]):
        gt = _boxes(gt_boxes.get(key, ()), f"reference boxes of {key}")
        boxes = _boxes(pred_boxes.get(key, ()), f"detected boxes of {key}")
        s = np.asarray(pred_scores.get(key, ()), dtype=np.float64).reshape(-1)
        if s.size != len(boxes):
            raise ValueError(f"image {key}: {len(boxes)} detected boxes but {s.size} scores")
        s, tp = _match_image(boxes, s, gt, iou_threshold, max_detections)
        scores.append(s)
        tps.append(tp)
        n_gt += len(gt)
    if n_gt == 0:
        return float("nan")
    order = np.argsort(-np.concatenate(scores or [np.empty(0)]), kind="mergesort")
    if order.size == 0:
        return 0.0
    tp = np.concatenate(tps)[order]
    tp_cum, fp_cum = np.cumsum(tp), np.cumsum(~tp)
    recall = tp_cum / n_gt
    precision = np.maximum.accumulate((tp_cum / (tp_cum + fp_cum))[::-1])[::-1]
    idx = np.searchsorted(recall, np.linspace(0.0, 1.0, 101), side="left")
    return float(np.where(idx < len(precision), precision[np.minimum(idx, len(precision) - 1)], 0.0).mean())


def read_points_csv(path: str | os.PathLike, value_column: str) -> dict[str, np.ndarray]:
    """Read a LUNA16 CSV: ``seriesuid, coordX, coordY, coordZ, VALUE`` (other columns ignored).

    Args:
        path: ``candidates.csv`` (``value_column="probability"``) or ``annotations.csv`` /
            ``annotations_excluded.csv`` (``value_column="diameter_mm"``).
        value_column: The fourth column to read.

    Returns:
        seriesuid → float (n, 4) x, y, z (world, mm) and the value, scans in file order.

    Raises:
        DatasetError: Missing file, missing column, a short row, an empty seriesuid or a value
            that is not a finite number (the message names the file and the line).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, "file not found" if not path.exists() else "not a file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return _parse_points(path, csv.reader(f), (*POINT_COLUMNS, value_column))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(path, f"cannot read as CSV: {e}") from None


def _parse_points(path: Path, reader, columns: tuple[str, ...]) -> dict[str, np.ndarray]:
    header = [h.strip() for h in next(reader, [])]
    missing = [c for c in columns if c not in header]
    if missing:
        raise DatasetError(path, f"line 1: missing column(s) {', '.join(missing)}; expected "
                           f"{', '.join(columns)}, found {', '.join(header) or 'nothing'}")
    idx = [header.index(c) for c in columns]
    rows: dict[str, list[list[float]]] = {}
    for row in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(idx):
            raise DatasetError(path, f"line {line}: {len(row)} value(s), expected {len(header)} ({', '.join(header)})")
        uid = row[idx[0]].strip()
        if not uid:
            raise DatasetError(path, f"line {line}: empty seriesuid")
        values = []
        for name, i in zip(columns[1:], idx[1:]):
            try:
                v = float(row[i])
            except ValueError:
                v = math.nan
            if not math.isfinite(v):
                raise DatasetError(path, f"line {line}: {name} is not a finite number: {row[i].strip()!r}")
            values.append(v)
        rows.setdefault(uid, []).append(values)
    return {uid: np.asarray(v, dtype=np.float64) for uid, v in rows.items()}


def read_scan_list(path: str | os.PathLike) -> list[str]:
    """The seriesuids to score: a text file with one per line, or a folder of images.

    Args:
        path: A file (one seriesuid per line; a first line ``seriesuid`` and anything after a
            comma are ignored, so LUNA16's ``seriesuids.csv`` works), or a folder searched
            recursively for ``.mhd``, ``.mha``, ``.nii.gz``, ``.nii`` and ``.nrrd`` images, each
            named by its seriesuid.

    Raises:
        DatasetError: Missing path, or no seriesuid found.
    """
    path = Path(path)
    if path.is_dir():
        names = sorted(p.name for p in path.rglob("*") if p.is_file())
        uids = [n[: -len(s)] for n in names for s in IMAGE_SUFFIXES if n.endswith(s)]
        if not uids:
            raise DatasetError(path, f"no images ({', '.join(IMAGE_SUFFIXES)}) found to list the scans")
        return list(dict.fromkeys(uids))
    if not path.is_file():
        raise DatasetError(path, "scan list not found (expected a file of seriesuids or a folder of images)")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(path, f"cannot read: {e}") from None
    uids = [u for u in (line.split(",")[0].strip() for line in lines) if u]
    uids = uids[1:] if uids and uids[0] == "seriesuid" else uids
    if not uids:
        raise DatasetError(path, "no seriesuid listed")
    return list(dict.fromkeys(uids))


def evaluate_detection_csv(candidates_csv: str | os.PathLike, annotations_csv: str | os.PathLike,
                           out_dir: str | os.PathLike, *, excluded_csv: str | os.PathLike | None = None,
                           scans: str | os.PathLike | Sequence[str] | None = None,
                           max_candidates: int = MAX_CANDIDATES, n_bootstrap: int = 1000, confidence: float = 0.95,
                           seed: int = 0, interpolation: Interpolation = "linear", plots: bool = True) -> dict:
    """LUNA16 FROC evaluation of a ``candidates.csv`` against ``annotations.csv``; writes the report.

    Args:
        candidates_csv: Detections: ``seriesuid, coordX, coordY, coordZ, probability`` (mm).
        annotations_csv: Nodules: ``seriesuid, coordX, coordY, coordZ, diameter_mm``.
        out_dir: Folder for ``summary.json``, ``nodules.csv`` and ``froc.png``.
        excluded_csv: Findings whose hits are ignored (``annotations_excluded.csv``, same columns).
        scans: The scans to score: a scan-list file or image folder (:func:`read_scan_list`), or
            seriesuids. Default: every seriesuid of the annotations and candidates, which leaves
            out scans with neither a nodule nor a candidate.
        max_candidates: Candidates kept per scan.
        n_bootstrap: Bootstrap resamples of the scans for the intervals (0: none).
        confidence: Coverage of the intervals.
        seed: Seed of the bootstrap.
        interpolation: ``"linear"`` (LUNA16) or ``"step"``, see :mod:`volseg.evaluation.froc`.
        plots: Write ``froc.png``.

    Returns:
        The summary as written to ``summary.json`` (NaN and infinity written as ``null``).

    Raises:
        DatasetError: A file is missing or malformed, or there is no scan to score.
        VolsegError: A bad option.

    Example:
        >>> s = evaluate_detection_csv("candidates.csv", "annotations.csv", "eval",
        ...                            excluded_csv="annotations_excluded.csv", scans="seriesuids.csv")  # doctest: +SKIP
        >>> s["cpm"], s["cpm_ci"]  # doctest: +SKIP
        (0.871, [0.846, 0.893])
    """
    from volseg.io.atomic import check_output_dir

    out = check_output_dir(out_dir)
    candidates = read_points_csv(candidates_csv, "probability")
    annotations = read_points_csv(annotations_csv, "diameter_mm")
    excluded = {} if excluded_csv is None else read_points_csv(excluded_csv, "diameter_mm")
    scans, scan_source = _scan_arg(scans)
    if not (scans if scans is not None else (annotations or candidates)):
        raise DatasetError(annotations_csv, "no scans to score: no annotation, no candidate and no scan list")
    try:
        result = evaluate_froc(annotations, candidates, excluded, scans, max_candidates=max_candidates,
                               interpolation=interpolation, n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)
    except ValueError as e:
        raise VolsegError(None, str(e)) from None
    listed = set(scans) if scans is not None else set()
    outside = 0 if scans is None else sum(len(v) for uid, v in candidates.items() if uid not in listed)
    from volseg.evaluation.report import json_safe, write_summary

    summary = json_safe(_summary(result, candidates_csv, annotations_csv, excluded_csv, scan_source, outside))

    out.mkdir(parents=True, exist_ok=True)
    write_nodule_csv(out / "nodules.csv", result)
    if plots:
        plot_froc(result, out / "froc.png")
    write_summary(out / "summary.json", summary)
    return summary


def _scan_arg(scans) -> tuple[list[str] | None, str | None]:
    """The scan list and where it came from (a path, "given", or ``None`` for the default)."""
    if isinstance(scans, (str, os.PathLike)):
        return read_scan_list(scans), str(scans)
    return (None, None) if scans is None else ([str(s) for s in scans], "given")


def _summary(result: FrocResult, candidates_csv, annotations_csv, excluded_csv, scan_source, outside: int) -> dict:
    d = result.to_dict()
    files = {"candidates": str(candidates_csv), "annotations": str(annotations_csv),
             "excluded": None if excluded_csv is None else str(excluded_csv), "scans": scan_source}
    curve = _corners(result)
    return {**FORMAT, "settings": {**files, **d["settings"]},
            "counts": {**d["counts"], "candidates_outside_scans": outside},
            "cpm": d["cpm"], "cpm_ci": d["cpm_ci"], "sensitivity": d["sensitivity"],
            "sensitivity_ci": d["sensitivity_ci"], "froc": curve}


def _corners(result: FrocResult) -> dict:
    """The curve without the points inside a horizontal or vertical run (either reading is unchanged)."""
    c = result.curve
    x, y = c.fps_per_scan, c.sensitivity
    inner = np.zeros(x.size, bool)
    if x.size > 2:
        inner[1:-1] = ((x[:-2] == x[1:-1]) & (x[1:-1] == x[2:])) | ((y[:-2] == y[1:-1]) & (y[1:-1] == y[2:]))
    keep = ~inner
    return {"fps_per_scan": x[keep].tolist(), "sensitivity": y[keep].tolist(), "thresholds": c.thresholds[keep].tolist()}


def write_nodule_csv(path: str | os.PathLike, result: FrocResult) -> Path:
    """One row per nodule: seriesuid, coordX, coordY, coordZ (mm), diameter_mm, hit (0/1), probability.

    ``probability`` is the best hitting candidate's, empty for a missed nodule.
    """
    from volseg.io.atomic import write_text

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*POINT_COLUMNS, "diameter_mm", "hit", "probability"])
    for n in result.nodules:
        writer.writerow([n.seriesuid, *(f"{v:.6g}" for v in n.centre_mm), f"{n.diameter_mm:.6g}", int(n.hit),
                         "" if n.score is None else f"{n.score:.6g}"])
    return write_text(path, buf.getvalue())


def plot_froc(result: FrocResult, path: str | os.PathLike) -> Path:
    """The FROC curve on a log2 FP axis, with the sensitivities (and intervals) at the FP rates marked."""
    from volseg.evaluation.plots import _pyplot, _save

    plt = _pyplot()
    rates = np.array([r for r in result.fp_rates if r > 0])
    xs = np.geomspace(rates.min() / 1.5, rates.max() * 1.5, 400)
    ys = sensitivity_at(result.curve, xs, result.settings.get("interpolation", "linear"))
    sens = np.array([s for r, s in zip(result.fp_rates, result.sensitivity) if r > 0])
    ci = np.array([c for r, c in zip(result.fp_rates, result.sensitivity_ci) if r > 0])
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    ax.plot(xs, ys, color="tab:blue", linewidth=1.5)
    if np.isfinite(ci).all():
        err = np.clip(np.stack([sens - ci[:, 0], ci[:, 1] - sens]), 0.0, None)
        ax.errorbar(rates, sens, yerr=err, fmt="o", color="tab:blue", capsize=3, markersize=4)
        conf = result.settings.get("bootstrap", {}).get("confidence", 0.95)
        cpm = f"CPM {result.cpm:.3f} ({conf:.0%} CI {result.cpm_ci[0]:.3f}–{result.cpm_ci[1]:.3f})"
    else:
        ax.plot(rates, sens, "o", color="tab:blue", markersize=4)
        cpm = f"CPM {result.cpm:.3f}"
    ax.set_xscale("log", base=2)
    ax.set_xticks(rates, [f"{r:g}" for r in rates])
    ax.set_xlim(xs[0], xs[-1])
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("average false positives per scan")
    ax.set_ylabel("sensitivity")
    c = result.counts
    ax.set_title(f"FROC · {cpm} · {c['nodules']} nodules, {c['scans']} scans", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)
