"""Detections on the input grid and on disk: ``CASE_boxes.json`` and one ``candidates.csv``.

Boxes leave the network in voxels of the preprocessed image (cropped to the non-zero
region, then resampled to the plan's spacing). :func:`boxes_to_input_grid` puts them back in
voxels of the input image; :func:`case_boxes_record` adds world centres and diameters
(:func:`volseg.io.world.box_to_world`); :func:`write_case_boxes` writes the record and
:func:`write_candidates_csv` gathers every case of a folder into one LUNA16-style table.

Conventions: boxes are ``(z0, y0, x0, z1, y1, x1)``, half-open voxel indices (voxel ``k``
spans ``[k, k + 1)``; :mod:`volseg.detection.boxes`); world points are ``(x, y, z)`` in mm in
ITK's physical space (LPS), so the centre of a box is the physical point of the continuous
index ``((z0 + z1) / 2 - 0.5, ...)`` (:mod:`volseg.io.world`).

``CASE_boxes.json``::

    {"case_id": "case_000", "axis_order": "...", "world": "...",
     "geometry": {"shape": [Z, Y, X], "spacing": [sz, sy, sx], "origin": [x, y, z], "direction": [9 values]},
     "num_boxes": N,
     "boxes": [{"box_voxel": [z0, y0, x0, z1, y1, x1], "centre_world_mm": [x, y, z], "diameter_mm": d,
                "score": s, "class": k, "class_name": "nodule"}, ...]}     # highest score first
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from volseg.detection.boxes import check_boxes, scale_boxes, shift_boxes
from volseg.io.atomic import write_json, write_text
from volseg.io.nifti import Geometry
from volseg.io.world import box_to_world

__all__ = ["AXIS_ORDER", "CSV_COLUMNS", "WORLD", "boxes_to_input_grid", "case_boxes_record", "write_candidates_csv",
           "write_case_boxes"]

AXIS_ORDER = "zyx: box_voxel is (z0, y0, x0, z1, y1, x1), half-open voxel indices of the input image"
WORLD = "xyz: centre_world_mm is (x, y, z) in mm, ITK physical space (LPS); diameter_mm is the mean edge length"
CSV_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "probability")
BOXES_SUFFIX = "_boxes.json"


def boxes_to_input_grid(boxes: np.ndarray, props: dict) -> np.ndarray:
    """Boxes in voxels of the preprocessed image → voxels of the input image.

    Per axis, coordinates are scaled by ``shape_after_crop / shape_after_resampling`` (the
    resampling maps voxel edges linearly, ``align_corners=False``), then moved by the lower
    corner of ``crop_bbox``.

    Args:
        boxes: (N, 6) boxes (z0, y0, x0, z1, y1, x1), half-open, in voxels of the
            preprocessed (cropped and resampled) image.
        props: The case's preprocessing record: ``crop_bbox`` ([[z0, z1], [y0, y1], [x0, x1]],
            half-open), ``shape_after_crop`` and ``shape_after_resampling`` (z, y, x).

    Returns:
        float64 (N, 6) boxes (z0, y0, x0, z1, y1, x1) in voxels of the input image.

    Raises:
        ValueError: ``boxes`` is not (N, 6), or ``props`` lacks a key or holds a malformed one.

    Example:
        >>> props = {"crop_bbox": [[2, 22], [5, 45], [0, 30]], "shape_after_crop": [20, 40, 30],
        ...          "shape_after_resampling": [10, 80, 30]}
        >>> boxes_to_input_grid(np.array([[1, 10, 3, 5, 30, 9]]), props).tolist()
        [[4.0, 10.0, 3.0, 12.0, 20.0, 9.0]]
    """
    check_boxes(np.asarray(boxes))
    missing = [k for k in ("crop_bbox", "shape_after_crop", "shape_after_resampling") if k not in props]
    if missing:
        raise ValueError(f"props: expected the preprocessing record's {', '.join(missing)}; found keys {sorted(props)}")
    crop = np.asarray(props["crop_bbox"], dtype=np.float64)
    before = np.asarray(props["shape_after_crop"], dtype=np.float64)
    after = np.asarray(props["shape_after_resampling"], dtype=np.float64)
    if crop.shape != (3, 2) or before.shape != (3,) or after.shape != (3,) or (before <= 0).any() or (after <= 0).any():
        raise ValueError(f"props: expected crop_bbox [[z0, z1], [y0, y1], [x0, x1]] and positive (z, y, x) shapes, "
                         f"found {props['crop_bbox']}, {props['shape_after_crop']}, {props['shape_after_resampling']}")
    out = scale_boxes(np.asarray(boxes, dtype=np.float64).reshape(-1, 6), (before / after).tolist())
    return shift_boxes(out, crop[:, 0].tolist())


def _class_name(names: Sequence[str] | Mapping[int, str], k: int) -> str:
    try:
        if k < 0:
            raise IndexError(k)
        return str(names[k])
    except (IndexError, KeyError):
        raise ValueError(f"classes: index {k} has no name; class_names has {len(names)} entries "
                         f"(0-based foreground classes)") from None


def box_uncertainty(boxes_input_vox: np.ndarray, maps: Mapping[str, np.ndarray]) -> list[dict[str, float]]:
    """Per box, the mean of each (Z, Y, X) uncertainty map (nats) over the voxels the box covers
    (its half-open extent rounded outwards, clipped to the image; NaN for an empty box)."""
    out = []
    for b in np.asarray(boxes_input_vox, dtype=np.float64).reshape(-1, 6):
        rec = {}
        for name, m in maps.items():
            lo = np.clip(np.floor(b[:3]).astype(int), 0, m.shape)
            hi = np.clip(np.ceil(b[3:]).astype(int), 0, m.shape)
            region = m[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
            rec[name] = float(region.astype(np.float64).mean()) if region.size else float("nan")
        out.append(rec)
    return out


def case_boxes_record(case_id: str, boxes_input_vox: np.ndarray, scores: np.ndarray, classes: np.ndarray,
                      geometry: Geometry, class_names: Sequence[str] | Mapping[int, str],
                      uncertainty: Sequence[Mapping[str, float]] | None = None) -> dict:
    """The ``CASE_boxes.json`` record of one case (format in the module docstring).

    Args:
        case_id: The case's identifier (LUNA16 ``seriesuid``).
        boxes_input_vox: (N, 6) boxes (z0, y0, x0, z1, y1, x1), half-open, in voxels of the
            input image (:func:`boxes_to_input_grid`).
        scores: (N,) scores in [0, 1].
        classes: (N,) 0-based foreground class indices.
        geometry: The input image's grid.
        class_names: Name of each foreground class, indexed by class (a list, or a mapping).
        uncertainty: Per box, mean uncertainty maps inside it (:func:`box_uncertainty`), written
            as the box's ``uncertainty``.

    Returns:
        A JSON-ready dict; boxes sorted by descending score (ties keep their order).

    Raises:
        ValueError: Mismatched lengths, an inverted box, a score that is not finite or a class
            without a name.

    Example:
        >>> rec = case_boxes_record("c1", np.array([[0, 0, 0, 2, 4, 4]]), np.array([0.9]), np.array([0]),
        ...                         Geometry((8, 8, 8), (2.0, 1.0, 1.0)), ["nodule"])
        >>> rec["boxes"][0]["centre_world_mm"], rec["boxes"][0]["diameter_mm"]
        ([1.5, 1.5, 1.0], 4.0)
    """
    boxes = np.asarray(boxes_input_vox, dtype=np.float64)
    check_boxes(boxes, "boxes_input_vox")
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    c = np.asarray(classes).reshape(-1)
    if not len(s) == len(c) == len(boxes):
        raise ValueError(f"case {case_id}: {len(boxes)} boxes but {len(s)} scores and {len(c)} classes")
    if not np.isfinite(s).all() or not np.isfinite(boxes).all():
        raise ValueError(f"case {case_id}: expected finite boxes and scores, found NaN or Inf")
    centres, diameters = box_to_world(boxes, geometry)
    entries = []
    for i in np.argsort(-s, kind="stable"):
        k = int(c[i])
        entries.append({"box_voxel": [float(v) for v in boxes[i]],
                        "centre_world_mm": [float(v) for v in centres[i]],
                        "diameter_mm": float(diameters[i]), "score": float(s[i]), "class": k,
                        "class_name": _class_name(class_names, k)})
        if uncertainty is not None:
            entries[-1]["uncertainty"] = {n: (round(v, 6) if np.isfinite(v) else None)
                                          for n, v in uncertainty[i].items()}
    return {"case_id": str(case_id), "axis_order": AXIS_ORDER, "world": WORLD, "geometry": geometry.to_dict(),
            "num_boxes": len(entries), "boxes": entries}


def write_case_boxes(out_dir: str | os.PathLike, case_id: str, record: dict) -> Path:
    """Write ``record`` to ``out_dir/CASE_boxes.json`` atomically; returns the path."""
    return write_json(Path(out_dir) / f"{case_id}{BOXES_SUFFIX}", record)


def _case_rows(path: Path, case_id: str) -> list[tuple[str, float, float, float, float]]:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        rows = [(case_id, *(float(v) for v in b["centre_world_mm"]), float(b["score"])) for b in record["boxes"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: expected a CASE_boxes.json record with boxes[i].centre_world_mm and score "
                         f"({type(e).__name__}: {e})") from None
    if any(len(r) != 5 or not all(math.isfinite(v) for v in r[1:]) for r in rows):
        raise ValueError(f"{path}: expected 3 finite world coordinates and a finite score per box")
    return sorted(rows, key=lambda r: -r[4])


def write_candidates_csv(out_dir: str | os.PathLike, case_ids: Sequence[str] | None = None) -> Path:
    """Gather the ``*_boxes.json`` of ``out_dir`` into one LUNA16-style ``out_dir/candidates.csv``.

    Columns ``seriesuid, coordX, coordY, coordZ, probability``: the case id, the box's world
    centre (x, y, z) in mm and its score; rows sorted by case id, then by descending score.
    Numbers are written with the shortest repr that reads back exactly. Written atomically.

    Args:
        out_dir: Folder holding the ``CASE_boxes.json`` files; the CSV goes there too.
        case_ids: Only these cases (each must have its file); all files in ``out_dir`` when ``None``.

    Returns:
        The CSV's path.

    Raises:
        FileNotFoundError: A case of ``case_ids`` has no ``CASE_boxes.json``.
        ValueError: A file is not a boxes record.

    Example:
        >>> write_candidates_csv("predictions")  # doctest: +SKIP
        PosixPath('predictions/candidates.csv')
    """
    out = Path(out_dir)
    if case_ids is None:
        ids = [p.name[:-len(BOXES_SUFFIX)] for p in out.glob(f"*{BOXES_SUFFIX}")
               if not p.name.startswith(".") and p.is_file()]
    else:
        ids = [str(c) for c in case_ids]
        missing = [c for c in ids if not (out / f"{c}{BOXES_SUFFIX}").is_file()]
        if missing:
            raise FileNotFoundError(f"{out}: no {BOXES_SUFFIX} for case(s) {', '.join(missing[:10])}")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for case_id in sorted(set(ids)):
        for row in _case_rows(out / f"{case_id}{BOXES_SUFFIX}", case_id):
            writer.writerow([row[0], *(repr(v) for v in row[1:])])
    return write_text(out / "candidates.csv", buf.getvalue())
