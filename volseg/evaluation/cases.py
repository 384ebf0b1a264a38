"""Finding and reading case pairs: ``PRED/CASE.nii.gz`` against ``REF/CASE.nii.gz``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from volseg.errors import VolsegError

ENDINGS = (".nii.gz", ".nii")


@dataclass(frozen=True)
class CasePairs:
    """Cases found in a prediction and a reference folder.

    Attributes:
        pairs: (case id, prediction file, reference file) for cases in both folders.
        missing_pred: Reference cases without a prediction.
        missing_ref: Predicted cases without a reference.
        unpredicted: (case id, reference file) for each case of ``missing_pred``.
    """

    pairs: tuple[tuple[str, Path, Path], ...]
    missing_pred: tuple[str, ...]
    missing_ref: tuple[str, ...]
    unpredicted: tuple[tuple[str, Path], ...] = ()


def list_cases(folder: str | os.PathLike) -> dict[str, Path]:
    """Case id → file for every ``CASE.nii.gz`` / ``CASE.nii`` in ``folder``.

    Raises:
        VolsegError: The folder does not exist, or holds a case both as ``.nii`` and ``.nii.gz``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise VolsegError(folder, "folder not found")
    cases: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        ending = next((e for e in ENDINGS if p.name.endswith(e)), None)
        if ending is None or p.name.startswith(".") or not p.is_file():
            continue
        case_id = p.name[: -len(ending)]
        if case_id in cases:
            raise VolsegError(p, f"case {case_id} exists twice ({cases[case_id].name} and {p.name})")
        cases[case_id] = p
    return cases


def pair_cases(pred_dir: str | os.PathLike, ref_dir: str | os.PathLike) -> CasePairs:
    """Match prediction and reference files by case id."""
    pred, ref = list_cases(pred_dir), list_cases(ref_dir)
    if not pred and not ref:
        raise VolsegError(ref_dir, f"no .nii.gz or .nii files here nor in {pred_dir}")
    pairs = tuple((c, pred[c], ref[c]) for c in sorted(set(pred) & set(ref)))
    missing_pred = tuple(sorted(set(ref) - set(pred)))
    return CasePairs(pairs, missing_pred, tuple(sorted(set(pred) - set(ref))), tuple((c, ref[c]) for c in missing_pred))


def read_pair(pred_path: Path | None, ref_path: Path):
    """Read a prediction and its reference, checking that their grids match.

    Args:
        pred_path: The prediction, or ``None`` for a missing one: it is scored as an empty
            label map (all background) on the reference grid.
        ref_path: The reference.

    Returns:
        ``(pred, ref, geometry)``: integer (z, y, x) label maps and the reference geometry.

    Raises:
        VolsegError: A file cannot be read, holds non-integer labels, or the grids differ
            (the message names the prediction file).
    """
    from volseg.io.nifti import read_image

    ref, ref_geom = read_image(ref_path)
    if pred_path is None:
        ref = _as_labels(ref, ref_path)
        return np.zeros_like(ref), ref, ref_geom
    pred, pred_geom = read_image(pred_path)
    if ref_geom.matches(pred_geom) is not None:
        raise VolsegError(pred_path, f"geometry does not match the reference {ref_path}: "
                          f"{_difference(pred_geom, ref_geom)}")
    return _as_labels(pred, pred_path), _as_labels(ref, ref_path), ref_geom


def _difference(pred, ref) -> str:
    # Geometry.matches decides; this only words the difference with plain numbers.
    for name in ("shape", "spacing", "origin", "direction"):
        a, b = np.asarray(getattr(pred, name), float), np.asarray(getattr(ref, name), float)
        if a.shape != b.shape or not np.allclose(a, b, rtol=1e-4, atol=1e-4):
            return f"{name} {_fmt(a)} differs from {_fmt(b)}"
    return "grids differ"


def _fmt(values: np.ndarray) -> str:
    return "(" + ", ".join(f"{x:.6g}" for x in values) + ")"


def _as_labels(array: np.ndarray, path: Path) -> np.ndarray:
    if np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
        return array
    rounded = np.rint(array)
    if not np.array_equal(rounded, array):
        raise VolsegError(path, f"expected a label map of integers, got non-integer {array.dtype} values")
    if rounded.min(initial=0) < 0:
        raise VolsegError(path, "label map holds negative values")
    return rounded.astype(np.int32)
