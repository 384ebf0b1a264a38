"""Finding the parts of an nnU-Net v2 results folder.

A trainer folder ``RESULTS/DatasetXXX_Name/TRAINER__PLANS__CONFIGURATION/`` holds
``plans.json``, ``dataset.json``, ``dataset_fingerprint.json`` (optional) and one
``fold_K/`` per trained fold (K = 0, 1, ... or ``all``) with ``checkpoint_final.pth`` and
``checkpoint_best.pth``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from volseg.errors import ModelError

CHECKPOINTS = ("final", "best")


@dataclass(frozen=True)
class ResultsFolder:
    """The files of one trainer folder that an import reads.

    Attributes:
        root: The trainer folder.
        plans: ``plans.json``.
        dataset: ``dataset.json``.
        fingerprint: ``dataset_fingerprint.json``, or None when the folder has none.
        checkpoints: Fold name → ``fold_K/checkpoint_<final|best>.pth``, in fold order.
    """

    root: Path
    plans: Path
    dataset: Path
    fingerprint: Path | None
    checkpoints: dict[str, Path]


def _fold_order(name: str) -> tuple[int, int | str]:
    return (0, int(name)) if name.isdigit() else (1, name)


def find_results(root: str | os.PathLike, folds: Sequence[str | int] | None = None,
                 checkpoint: str = "final") -> ResultsFolder:
    """Locate plans, dataset description and the checkpoints of ``folds`` in a trainer folder.

    Args:
        root: The trainer folder (``TRAINER__PLANS__CONFIGURATION``).
        folds: Fold names (``0``, ``1``, ..., ``all``); default every fold holding the checkpoint.
        checkpoint: ``"final"`` or ``"best"``.

    Raises:
        ModelError: One line naming the folder or file: not a folder, no ``plans.json`` (a
            dataset folder's trainer folders are listed), no ``dataset.json``, no fold with the
            checkpoint, or a requested fold without it.
    """
    root = Path(root)
    if checkpoint not in CHECKPOINTS:
        raise ModelError(None, f"--checkpoint must be one of {', '.join(CHECKPOINTS)}, got {checkpoint!r}")
    if not root.is_dir():
        raise ModelError(root, "nnU-Net results folder not found")
    plans = root / "plans.json"
    if not plans.is_file():
        inner = sorted(p.parent.name for p in root.glob("*/plans.json"))
        hint = (f"; this looks like a dataset folder, pass one of its trainer folders: {', '.join(inner)}" if inner
                else "; expected a trainer folder TRAINER__PLANS__CONFIGURATION with plans.json, dataset.json, fold_K/")
        raise ModelError(plans, f"file not found{hint}")
    dataset = root / "dataset.json"
    if not dataset.is_file():
        raise ModelError(dataset, "file not found; nnU-Net copies it into every trainer folder")
    name = f"checkpoint_{checkpoint}.pth"
    if folds:
        found = {}
        for fold in (str(f) for f in folds):
            path = root / f"fold_{fold}" / name
            if not path.is_file():
                raise ModelError(path, f"checkpoint not found (fold {fold} of {root.name})")
            found[fold] = path
    else:
        names = sorted((p.parent.name[len("fold_"):] for p in root.glob(f"fold_*/{name}")), key=_fold_order)
        if not names:
            raise ModelError(root, f"no fold_K/{name}: no fold finished training"
                             + ("; try --checkpoint best" if checkpoint == "final" else ""))
        found = {f: root / f"fold_{f}" / name for f in names}
    fingerprint = root / "dataset_fingerprint.json"
    return ResultsFolder(root=root, plans=plans, dataset=dataset,
                         fingerprint=fingerprint if fingerprint.is_file() else None, checkpoints=found)
