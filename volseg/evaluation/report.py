"""Writing the evaluation outputs: ``summary.json`` and ``cases.csv`` (atomically)."""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path

from volseg.evaluation.case import METRICS
from volseg.evaluation.lesions import detection_scores
from volseg.io.atomic import write_json, write_text

LESION_COLUMNS = (*detection_scores(0, 0, 0, 0, 0.0), "count_error")


def json_safe(obj):
    """Replace NaN and infinities by ``None`` (JSON has no NaN) and tuples by lists, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_summary(path: str | os.PathLike, summary: dict) -> Path:
    """Write ``summary`` as JSON with NaN written as ``null``."""
    return write_json(path, json_safe(summary))


def case_rows(cases: list[dict], lesion_wise: bool) -> tuple[list[str], list[list]]:
    """One row per (case, label or region) of a scored case; one row with the error for a failed case.

    A case without a prediction has status ``missing``, the scores of an empty prediction, and
    says so in the ``error`` column.
    """
    header = ["case", "status", "label", *METRICS]
    if lesion_wise:
        header += [f"lesion_{c}" for c in LESION_COLUMNS]
    header.append("error")
    rows = []
    for case in cases:
        if "metrics" not in case:
            rows.append([case["case"], case["status"]] + [""] * (len(header) - 3) + [case.get("error", "")])
            continue
        for name, m in case["metrics"].items():
            row = [case["case"], case["status"], name, *(_cell(m[k]) for k in METRICS)]
            if lesion_wise:
                row += [_cell(v) for v in _lesion_cells(m.get("lesions", {}))]
            rows.append(row + [case.get("error", "")])
    return header, rows


def _lesion_cells(lesions: dict) -> list:
    """The ``LESION_COLUMNS`` of one lesion record (``count_error`` from the counts when absent)."""
    if lesions and "count_error" not in lesions:
        lesions = {**lesions, "count_error": lesions["n_pred"] - lesions["n_ref"]}
    return [lesions.get(c, "") for c in LESION_COLUMNS]


def write_case_csv(path: str | os.PathLike, cases: list[dict], lesion_wise: bool) -> Path:
    """Write the per-case table (NaN as an empty cell)."""
    header, rows = case_rows(cases, lesion_wise)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return write_text(path, buf.getvalue())


def _cell(value):
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.6g}"
    return value
