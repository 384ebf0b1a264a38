"""Import a LUNA16-style detection dataset: nodule centres in world mm → instance maps.

Inputs (never modified): ``annotations.csv`` with the columns ``seriesuid, coordX, coordY,
coordZ, diameter_mm`` (world x, y, z and diameter in mm, ITK's physical space); optionally
``annotations_excluded.csv`` with the same columns, findings that are neither nodules nor
negatives (a negative diameter there means unknown and becomes
:data:`EXCLUDED_DEFAULT_DIAMETER_MM`, as in LUNA16's evaluation); and a folder searched
recursively (LUNA16's ``subset0`` … ``subset9``) for ``SERIESUID.mhd`` (+ ``.raw``),
``.mha``, ``.nii.gz`` or ``.nii``.

Output: a dataset folder in nnU-Net v2 raw layout with one sphere per finding in
``labelsTr/CASE.nii.gz``, excluded findings as ``"ignore"`` ids in ``labelsTr/CASE.json``,
``case_ids.csv`` and copies of the annotation tables under the case ids; scans without
findings are imported as negatives. docs/formats.md describes every file. Case ids are
the seriesuids when all are safe file names (letters, digits, ``.``, ``_``, ``-``; LUNA16's
dotted uids are), so LUNA16 tables match predictions as they are; otherwise ``case_0000``,
``case_0001``, … in seriesuid order.

This module finds the scans, chooses the case ids and writes the dataset; reading the CSVs is
in :mod:`volseg.io.luna16_csv`, drawing a scan's instance map in :mod:`volseg.io.luna16_labels`,
and their public names are importable from here too.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from volseg.errors import DatasetError
from volseg.io.atomic import atomic_path, write_json, write_text
from volseg.io.luna16_csv import COLUMNS, EXCLUDED_DEFAULT_DIAMETER_MM, Finding, read_annotations
from volseg.io.luna16_labels import check_findings, label_case
from volseg.io.nifti import read_geometry, read_image, write_image

__all__ = ["CASE_ID_MODES", "COLUMNS", "EXCLUDED_DEFAULT_DIAMETER_MM", "IMAGE_ENDINGS", "MARKER", "Finding",
           "assign_case_ids", "check_findings", "find_images", "import_luna16", "label_case", "read_annotations"]

log = logging.getLogger(__name__)

IMAGE_ENDINGS = (".nii.gz", ".nii", ".mhd", ".mha")
CASE_ID_MODES = ("auto", "seriesuid", "index")
MARKER = ".volseg-import-luna16"
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def find_images(folder: str | os.PathLike) -> dict[str, Path]:
    """Find the scans under ``folder`` (recursively): seriesuid (file name without ending) → path.

    Raises:
        DatasetError: ``folder`` is missing, or two files carry the same seriesuid.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(folder, "image folder not found")
    found: dict[str, Path] = {}
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            ending = next((e for e in IMAGE_ENDINGS if name.lower().endswith(e)), None)
            if ending is None or name.startswith("."):
                continue
            uid, path = name[: -len(ending)], Path(root) / name
            if uid in found:
                raise DatasetError(path, f"second image for seriesuid {uid}, the first is {found[uid]}; keep one")
            found[uid] = path
    return found


def assign_case_ids(seriesuids: Iterable[str], mode: str = "auto") -> dict[str, str]:
    """Choose the case id of every seriesuid (see the module docstring).

    Args:
        seriesuids: The scans.
        mode: "seriesuid" (keep them; each must be a safe file name), "index" (``case_0000``, …
            in seriesuid order) or "auto" (seriesuids when all are safe, else index).

    Returns:
        seriesuid → case id.
    """
    uids = sorted(set(seriesuids))
    if mode not in CASE_ID_MODES:
        raise ValueError(f"case id mode must be one of {', '.join(CASE_ID_MODES)}, got {mode!r}")
    unsafe = [u for u in uids if not _SAFE_ID.match(u)]
    if mode == "seriesuid" and unsafe:
        raise DatasetError(None, f"seriesuid {unsafe[0]!r} is not usable as a case id (letters, digits, '.', '_', "
                           "'-' only); use case ids \"index\"")
    if mode == "index" or (mode == "auto" and unsafe):
        return {u: f"case_{i:04d}" for i, u in enumerate(uids)}
    return {u: u for u in uids}


def import_luna16(annotations: str | os.PathLike, images: str | os.PathLike, out: str | os.PathLike,
                  excluded: str | os.PathLike | None = None, case_ids: str = "auto", skip_missing: bool = False,
                  name: str | None = None, num_workers: int = 1, progress: bool = True) -> Path:
    """Build a detection dataset folder from LUNA16-style annotations and scans.

    Args:
        annotations: ``annotations.csv`` (seriesuid, coordX, coordY, coordZ in world mm, diameter_mm).
        images: Folder searched recursively for ``SERIESUID.mhd`` / ``.mha`` / ``.nii.gz`` / ``.nii``.
        out: Dataset folder to write: new, empty, or a previous import (whose cases are replaced).
        excluded: Optional ``annotations_excluded.csv``, drawn as ignore regions.
        case_ids: "auto", "seriesuid" or "index" (see :func:`assign_case_ids`).
        skip_missing: Drop CSV rows whose seriesuid has no image (e.g. when importing only
            some subsets) instead of failing.
        name: ``name`` in dataset.json (default: the folder name of ``out``).
        num_workers: Worker processes converting scans.
        progress: Show a progress bar.

    Returns:
        ``out``.

    Raises:
        DatasetError: Bad CSV (see :func:`read_annotations`), a seriesuid without image, two
            images for one seriesuid, a centre outside its image, an unreadable image, or
            ``out`` overlapping the inputs or holding other files.

    Example:
        >>> import_luna16("luna16/annotations.csv", "luna16", "Dataset016_Luna",  # doctest: +SKIP
        ...               excluded="luna16/annotations_excluded.csv", num_workers=4)
    """
    out, images = Path(out), Path(images)
    inputs = [Path(p) for p in (annotations, excluded) if p is not None]
    _check_out(out, images, inputs)
    rows = read_annotations(annotations)
    ex_rows = read_annotations(excluded, excluded=True) if excluded is not None else []
    scans = find_images(images)
    if not scans:
        raise DatasetError(images, f"no images found (looked for *{', *'.join(IMAGE_ENDINGS)} in all subfolders)")
    rows, ex_rows = _matched(rows, scans, images, skip_missing), _matched(ex_rows, scans, images, skip_missing)
    by_uid, ex_by_uid = _group(rows), _group(ex_rows)
    _check_centres(scans, rows, ex_rows)
    ids = assign_case_ids(scans, case_ids)
    _prepare_out(out, set(ids.values()))
    jobs = [_Job(u, ids[u], scans[u], tuple(by_uid.get(u, ())), tuple(ex_by_uid.get(u, ())), out) for u in sorted(scans)]
    results = {r["seriesuid"]: r for r in _run(jobs, num_workers, progress)}
    _write_tables(out, images, scans, ids, rows, ex_rows if excluded is not None else None, results)
    write_json(out / "dataset.json", {
        "name": name or out.name, "description": "CT scans with nodule annotations (LUNA16 format)",
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "nodule": 1}, "numTraining": len(jobs),
        "file_ending": ".nii.gz", "task": "detection", "instance_labels": True})
    log.info("imported %d scans (%d without findings), %d findings, %d excluded findings into %s", len(jobs),
             sum(1 for u in scans if u not in by_uid), len(rows), len(ex_rows), out)
    return out


@dataclass(frozen=True)
class _Job:
    seriesuid: str
    case_id: str
    image: Path
    findings: tuple[Finding, ...]
    excluded: tuple[Finding, ...]
    out: Path


def _import_one(job: _Job) -> dict:
    array, geometry = read_image(job.image)
    label, ignore, excluded_ids = label_case(geometry, list(job.findings), list(job.excluded), job.image.name)
    dst = write_image(job.out / "imagesTr" / f"{job.case_id}_0000.nii.gz", array, geometry)
    if (diff := geometry.matches(read_geometry(dst))) is not None:
        raise DatasetError(job.image, f"geometry does not survive the conversion to NIfTI: {diff}")
    write_image(job.out / "labelsTr" / f"{job.case_id}.nii.gz", label, geometry)
    write_json(job.out / "labelsTr" / f"{job.case_id}.json",
               {"instances": {str(i): 0 for i in range(1, len(job.findings) + 1)}, "ignore": ignore})
    return {"seriesuid": job.seriesuid, "finding_ids": list(range(1, len(job.findings) + 1)),
            "excluded_ids": excluded_ids}


def _run(jobs: list[_Job], num_workers: int, progress: bool) -> list[dict]:
    from volseg.parallel import map_in_processes

    return map_in_processes(_import_one, jobs, num_workers, "import-luna16", "scan", progress)


def _check_out(out: Path, images: Path, inputs: list[Path]) -> None:
    o, i = out.resolve(), images.resolve()
    if o == i:
        raise DatasetError(out, "output folder is the image folder; choose another --out")
    if i in o.parents or o in i.parents:
        inner, outer = (out, images) if i in o.parents else (images, out)
        raise DatasetError(out, f"{inner} lies inside {outer}; the output and image folders must be separate")
    for p in inputs:
        if o in p.resolve().parents:
            raise DatasetError(p, f"input file lies inside the output folder {out}; choose another --out")


def _matched(rows: list[Finding], scans: dict[str, Path], images: Path, skip_missing: bool) -> list[Finding]:
    missing = [r for r in rows if r.seriesuid not in scans]
    if missing and not skip_missing:
        r = missing[0]
        raise DatasetError(r.path, f"{r.where()}: no image for this seriesuid under {images} "
                           f"(looked for {r.seriesuid}{{{','.join(IMAGE_ENDINGS)}}})")
    if missing:
        log.warning("%s: skipped %d rows of %d seriesuids without image", rows[0].path, len(missing),
                    len({r.seriesuid for r in missing}))
    return [r for r in rows if r.seriesuid in scans]


def _group(rows: list[Finding]) -> dict[str, list[Finding]]:
    groups: dict[str, list[Finding]] = {}
    for r in rows:
        groups.setdefault(r.seriesuid, []).append(r)
    return groups


def _check_centres(scans: dict[str, Path], rows: list[Finding], ex_rows: list[Finding]) -> None:
    """Check every centre against its image header (first bad row first) before anything is written."""
    by_uid, ex_by_uid = _group(rows), _group(ex_rows)
    for uid in dict.fromkeys(f.seriesuid for f in (*rows, *ex_rows)):  # in order of first appearance
        check_findings(read_geometry(scans[uid]), by_uid.get(uid, []), ex_by_uid.get(uid, []), scans[uid].name)


def _prepare_out(out: Path, new_ids: set[str]) -> None:
    """Create ``out``, or clear a previous import's dataset.json and the cases it no longer holds."""
    if out.exists() and not out.is_dir():
        raise DatasetError(out, "exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise DatasetError(out, "folder exists, is not empty and is not a previous import-luna16 output; "
                           "choose another --out")
    (out / "dataset.json").unlink(missing_ok=True)  # an interrupted re-import is no valid dataset
    if (out / "case_ids.csv").is_file():
        with open(out / "case_ids.csv", newline="", encoding="utf-8") as f:
            old = {row["case_id"] for row in csv.DictReader(f) if row.get("case_id")}
        for cid in sorted(old - new_ids):
            for p in (out / "imagesTr" / f"{cid}_0000.nii.gz", out / "labelsTr" / f"{cid}.nii.gz",
                      out / "labelsTr" / f"{cid}.json"):
                p.unlink(missing_ok=True)
    for sub in ("imagesTr", "labelsTr"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    write_text(out / MARKER, "written by volseg import-luna16\n")


def _write_tables(out: Path, images: Path, scans: dict[str, Path], ids: dict[str, str], rows: list[Finding],
                  ex_rows: list[Finding] | None, results: dict[str, dict]) -> None:
    _write_csv(out / "case_ids.csv", ["case_id", "seriesuid", "image"],
               [[ids[u], u, scans[u].relative_to(images).as_posix()] for u in sorted(scans)])
    header = [*COLUMNS, "source_seriesuid", "instance"]
    _write_csv(out / "annotations.csv", header, _table(rows, ids, results, "finding_ids"))
    if ex_rows is None:
        (out / "annotations_excluded.csv").unlink(missing_ok=True)
    else:
        _write_csv(out / "annotations_excluded.csv", header, _table(ex_rows, ids, results, "excluded_ids"))


def _table(rows: list[Finding], ids: dict[str, str], results: dict[str, dict], key: str) -> list[list]:
    """The input rows under their case id, with the source seriesuid and the drawn instance id."""
    count: dict[str, int] = {}
    table = []
    for r in rows:
        i = count[r.seriesuid] = count.get(r.seriesuid, -1) + 1
        inst = results[r.seriesuid][key][i]
        table.append([ids[r.seriesuid], *r.fields[1:], r.seriesuid, "" if inst is None else inst])
    return table


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
