"""Reference findings of instance-labelled cases, as LUNA16-style annotation rows.

A finding's centre is the centre of its tight box, in world coordinates (x, y, z, mm, via
:func:`volseg.io.world.box_to_world`); its diameter is that of the sphere of equal volume
(mm). Instances listed as ``"ignore"`` in ``CASE.json`` become excluded findings.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from volseg.io.atomic import atomic_path

COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")


def instance_findings(instance_map: np.ndarray, geometry, ids: Sequence[int]) -> list[tuple[float, float, float, float]]:
    """(x, y, z, diameter) in mm of each instance ``id`` present in a (Z, Y, X) instance map."""
    from volseg.detection.boxes import boxes_from_instances
    from volseg.io.world import box_to_world

    present = [int(i) for i in ids if np.any(instance_map == int(i))]
    if not present:
        return []
    boxes = boxes_from_instances(instance_map, present)
    centres, _ = box_to_world(boxes.astype(np.float64), geometry)
    voxel_mm3 = float(np.prod(geometry.spacing))
    rows = []
    for centre, i in zip(centres, present):
        volume = float(np.count_nonzero(instance_map == i)) * voxel_mm3
        rows.append((*[float(v) for v in centre], float((6 * volume / np.pi) ** (1 / 3))))
    return rows


def case_findings(label_file: Path, instances_file: Path) -> tuple[list, list]:
    """(findings, excluded findings) of one case: rows (x, y, z, diameter_mm)."""
    from volseg.io.dataset import read_ignore, read_instances
    from volseg.io.nifti import read_image

    label, geometry = read_image(label_file)
    return (instance_findings(label, geometry, sorted(read_instances(instances_file))),
            instance_findings(label, geometry, read_ignore(instances_file)))


def write_annotations(path: str | os.PathLike, rows: dict[str, list]) -> Path:
    """Write ``case id → [(x, y, z, diameter_mm), ...]`` as a LUNA16-style ``annotations.csv`` (atomic)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(COLUMNS)
            for case_id in sorted(rows):
                for x, y, z, d in rows[case_id]:
                    w.writerow([case_id, f"{x:.3f}", f"{y:.3f}", f"{z:.3f}", f"{d:.3f}"])
    return path


def write_references(labels_dir: Path, case_ids: Sequence[str], out_dir: Path, ending: str = ".nii.gz") -> dict:
    """``annotations.csv``, ``annotations_excluded.csv`` and ``scans.txt`` of ``case_ids`` in ``out_dir``.

    Returns:
        Paths written: ``{"annotations", "excluded", "scans"}``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    found, excluded = {}, {}
    for c in case_ids:
        found[c], excluded[c] = case_findings(labels_dir / f"{c}{ending}", labels_dir / f"{c}.json")
    paths = {"annotations": write_annotations(out_dir / "annotations.csv", found),
             "excluded": write_annotations(out_dir / "annotations_excluded.csv", excluded),
             "scans": out_dir / "scans.txt"}
    with atomic_path(paths["scans"]) as tmp:
        tmp.write_text("".join(f"{c}\n" for c in sorted(case_ids)), encoding="utf-8")
    return paths
