"""Reading and validating LUNA16-style annotation CSVs (``annotations.csv``, ``annotations_excluded.csv``).

Each row is a finding: ``seriesuid, coordX, coordY, coordZ, diameter_mm``, its centre in world
(x, y, z) mm (ITK's physical space) and its diameter in mm. Rows become :class:`Finding`
records that remember their file and line, so that later checks can name the offending row.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

from volseg.errors import DatasetError

COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
EXCLUDED_DEFAULT_DIAMETER_MM = 10.0

__all__ = ["COLUMNS", "EXCLUDED_DEFAULT_DIAMETER_MM", "Finding", "read_annotations"]


@dataclass(frozen=True)
class Finding:
    """One row of an annotations CSV.

    Attributes:
        seriesuid: The scan it belongs to.
        centre_xyz: World centre (x, y, z) in mm.
        diameter_mm: Diameter in mm (for excluded rows, a negative value is already replaced).
        path: The CSV file.
        line: Its line number in ``path`` (the header is line 1).
        fields: The row's original text, in :data:`COLUMNS` order.
    """

    seriesuid: str
    centre_xyz: tuple[float, float, float]
    diameter_mm: float
    path: Path
    line: int
    fields: tuple[str, ...]

    def where(self) -> str:
        """The row for error messages: ``line N (seriesuid UID)``."""
        return f"line {self.line} (seriesuid {self.seriesuid})"


def read_annotations(path: str | os.PathLike, excluded: bool = False) -> list[Finding]:
    """Read a LUNA16-style annotations CSV.

    Args:
        path: CSV with exactly the columns of :data:`COLUMNS` (any order).
        excluded: Rows are excluded findings: a negative diameter means unknown and becomes
            :data:`EXCLUDED_DEFAULT_DIAMETER_MM` (otherwise a negative diameter is an error).

    Returns:
        The rows in file order; blank lines are skipped.

    Raises:
        DatasetError: File missing or empty, a column missing, extra or repeated, a row with
            the wrong number of fields, an empty seriesuid, a non-numeric or non-finite number,
            or a negative diameter.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, "file not found")
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        _check_header(path, header)
        order = [header.index(c) for c in COLUMNS]
        rows = []
        for fields in reader:
            if not any(v.strip() for v in fields):
                continue
            if len(fields) != len(header):
                raise DatasetError(path, f"line {reader.line_num}: expected {len(header)} fields, got {len(fields)}")
            fields = tuple(fields[i].strip() for i in order)
            rows.append(_finding(path, reader.line_num, fields, excluded))
    return rows


def _check_header(path: Path, header: list[str]) -> None:
    want = ", ".join(COLUMNS)
    if not any(header):
        raise DatasetError(path, f"empty file, expected the header {want}")
    missing = [c for c in COLUMNS if c not in header]
    extra = [c for c in header if c not in COLUMNS]
    repeated = sorted({c for c in header if header.count(c) > 1})
    for what, names in (("missing", missing), ("unexpected", extra), ("repeated", repeated)):
        if names:
            raise DatasetError(path, f"line 1: {what} column(s) {', '.join(map(repr, names))}; expected {want}")


def _finding(path: Path, line: int, fields: tuple[str, ...], excluded: bool) -> Finding:
    uid = fields[0]
    if not uid:
        raise DatasetError(path, f"line {line}: empty seriesuid")
    values = []
    for name, text in zip(COLUMNS[1:], fields[1:]):
        try:
            v = float(text)
        except ValueError:
            v = math.nan
        if not math.isfinite(v):
            raise DatasetError(path, f"line {line} (seriesuid {uid}): {name} is {text!r}, expected a finite number")
        values.append(v)
    diameter = values[3]
    if diameter < 0:
        if not excluded:
            raise DatasetError(path, f"line {line} (seriesuid {uid}): diameter_mm is {fields[4]}, expected >= 0")
        diameter = EXCLUDED_DEFAULT_DIAMETER_MM
    return Finding(uid, (values[0], values[1], values[2]), diameter, path, line, fields)
