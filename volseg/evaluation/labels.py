"""Which structures are scored: labels (one value) and regions (a union of values).

A label specification is a dict ``name → value`` where a value is an ``int`` (a label)
or a tuple of ints (a region, e.g. ``"lesions_followup": (1, 2)`` for stable ∪ new), as
``volseg.io.dataset`` reads ``dataset.json`` labels. Background (0) is never scored.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from volseg.errors import VolsegError

LabelSpec = dict[str, "int | tuple[int, ...]"]


def parse_region(text: str) -> tuple[str, tuple[int, ...]]:
    """Parse a ``--regions`` item such as ``"lesions=1,2"`` into ``("lesions", (1, 2))``."""
    name, sep, values = text.partition("=")
    try:
        parsed = tuple(sorted({int(v) for v in values.split(",") if v.strip()}))
    except ValueError:
        parsed = ()
    if not sep or not name.strip() or not parsed or 0 in parsed:
        raise VolsegError(None, f"--regions: expected NAME=V1,V2,... with non-zero label values, got {text!r}")
    return name.strip(), parsed


def normalize_labels(labels: dict) -> LabelSpec:
    """Check a label specification and drop background (value 0).

    Raises:
        ValueError: A value is neither a non-negative int nor a non-empty list of them,
            or a region contains 0.
    """
    out: LabelSpec = {}
    for name, value in labels.items():
        if isinstance(value, (list, tuple, set, frozenset)):
            vals = tuple(sorted({int(v) for v in value}))
            if not vals or 0 in vals:
                raise ValueError(f"region {name!r} must list non-zero label values, got {value!r}")
            out[str(name)] = vals
        elif isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 0:
            if int(value) != 0:
                out[str(name)] = int(value)
        else:
            raise ValueError(f"label {name!r} must be an int or a list of ints, got {value!r}")
    return out


def declared_values(labels: dict) -> set[int]:
    """Every label value a label map may hold under ``labels`` (background included)."""
    values = {0}
    for v in labels.values():
        values.update(v if isinstance(v, (list, tuple)) else [v])
    return {int(v) for v in values}


def labels_from_dataset(dataset_dir: str | os.PathLike) -> tuple[LabelSpec, str, set[int]]:
    """Labels, task and declared values from ``DATASET/dataset.json``.

    Returns:
        ``(labels, task, declared)``: scored labels and regions (background dropped), the
        task ("segmentation" when not given) and all declared label values.
    """
    from volseg.io.dataset import load_dataset_json

    path = Path(dataset_dir) / "dataset.json"
    data = load_dataset_json(path)
    raw = data.get("labels")
    if not isinstance(raw, dict) or not raw:
        raise VolsegError(path, '"labels" must be a non-empty object such as {"background": 0, "lesion": 1}')
    if "channel_names" not in data and "modalities" in data:  # nnDetection: {"0": "nodule"}
        raw = {str(v): int(k) + 1 for k, v in raw.items()}
    try:
        labels = normalize_labels(raw)
    except (ValueError, TypeError) as e:
        raise VolsegError(path, str(e)) from None
    return labels, str(data.get("task", "segmentation")), declared_values(raw)


def labels_from_values(values, regions: LabelSpec | None = None) -> LabelSpec:
    """Name each non-zero value by itself (``{"1": 1, "2": 2}``) and append ``regions``."""
    out: LabelSpec = {str(int(v)): int(v) for v in sorted(values) if int(v) != 0}
    out.update(regions or {})
    return out


def mask_of(labels: np.ndarray, value: int | tuple[int, ...]) -> np.ndarray:
    """Bool (z, y, x) mask of a label value or of the union of a region's values."""
    if isinstance(value, tuple):
        return np.isin(labels, value) if len(value) > 1 else labels == value[0]
    return labels == value


def nonzero_values(labels: np.ndarray) -> set[int]:
    """The distinct non-zero values of a label map.

    Only the foreground is sorted: ``np.unique`` of a whole 512×512×300 volume, or a
    ``bincount`` (which first casts to int64), takes seconds.
    """
    return {int(v) for v in np.unique(labels[labels != 0])}


def check_values(found: set[int], allowed: set[int], path: str | os.PathLike) -> None:
    """Raise when the label values ``found`` in a file lie outside ``allowed``, naming the file."""
    extra = sorted(set(found) - allowed)
    if extra:
        raise VolsegError(path, f"label value(s) {', '.join(map(str, extra))} not declared in dataset.json "
                          f"labels (declared: {', '.join(map(str, sorted(allowed)))})")
