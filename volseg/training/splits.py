"""Cross-validation splits: written once per dataset, reproducible, user-replaceable."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from volseg.errors import ModelError
from volseg.io.atomic import write_json

DEFAULT_FOLDS = 5
DEFAULT_SEED = 12345


def make_splits(case_ids: list[str], n_folds: int = DEFAULT_FOLDS, seed: int = DEFAULT_SEED) -> list[dict]:
    """Shuffle ``case_ids`` with ``seed`` and deal them into ``n_folds`` folds.

    Returns:
        One ``{"train": [...], "val": [...]}`` per fold; every case is in exactly one ``val``.
        With fewer cases than folds, the number of folds is the number of cases.
    """
    ids = sorted(case_ids)
    if len(ids) < 2:
        raise ValueError(f"need at least 2 cases for cross-validation, got {len(ids)}")
    n_folds = min(n_folds, len(ids))
    order = np.random.default_rng(seed).permutation(len(ids))
    folds = [sorted(ids[i] for i in order[k::n_folds]) for k in range(n_folds)]
    return [{"train": sorted(set(ids) - set(val)), "val": val} for val in folds]


def load_or_create_splits(path: str | os.PathLike, case_ids: list[str], n_folds: int = DEFAULT_FOLDS) -> list[dict]:
    """Read ``splits.json`` at ``path``, or write a new one there from ``case_ids``.

    A user may put their own ``splits.json`` there first (same format); it is checked
    against the available cases.

    Raises:
        ModelError: The file names cases that were not preprocessed, or is malformed.
    """
    path = Path(path)
    if not path.is_file():
        splits = make_splits(case_ids, n_folds)
        write_json(path, splits)
        return splits
    splits = _read_list(path)
    known = set(case_ids)
    for k, fold in enumerate(splits):
        if not isinstance(fold, dict) or not {"train", "val"} <= set(fold):
            raise ModelError(path, f"fold {k} must be an object with 'train' and 'val' lists")
        unknown = sorted((set(fold["train"]) | set(fold["val"])) - known)
        if unknown:
            raise ModelError(path, f"fold {k} names cases that are not preprocessed: {unknown[:5]}")
    return splits


def _read_list(path: Path) -> list:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ModelError(path, f"invalid JSON at line {e.lineno}: {e.msg}") from None
    if not isinstance(data, list) or not data:
        raise ModelError(path, "expected a non-empty list of folds")
    return data


def fold_cases(splits: list[dict], fold: int | str, path: str | os.PathLike | None = None) -> tuple[list[str], list[str]]:
    """Training and validation case ids of ``fold`` ("all": every case trains, none validates)."""
    if fold == "all":
        every = sorted(set().union(*[set(f["train"]) | set(f["val"]) for f in splits]))
        return every, []
    k = int(fold)
    if not 0 <= k < len(splits):
        raise ModelError(path, f"fold {k} does not exist; the splits have folds 0..{len(splits) - 1} (or 'all')")
    return list(splits[k]["train"]), list(splits[k]["val"])
