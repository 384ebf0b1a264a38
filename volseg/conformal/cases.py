"""Calibration cases from prediction folders: losses per case on the grid, one case at a time.

Dense tasks read ``PRED/maps/CASE_probabilities.npz`` (fp16 (K, Z, Y, X), written by
``predict --save-probabilities`` and by every fold's held-out validation) and the
reference label map ``REF/CASE<ending>``; the task says which probability map stands for
which reference labels (:meth:`conformal_targets`). Detection reads ``PRED/candidates.csv``
and the LUNA16-style ``annotations.csv`` (plus ``annotations_excluded.csv`` and
``scans.txt`` when present) of the references.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from volseg.conformal.risks import (DEFAULT_CONNECTIVITY, DEFAULT_COVERAGE, BoxCase, CaseLosses, DenseCase, Risk,
                                    box_losses, default_size_edges, dense_losses, reference_lesions)
from volseg.errors import DatasetError

PROBABILITIES = "maps/{case}_probabilities.npz"


def probability_files(pred_dir: Path) -> dict[str, Path]:
    """case id → probability file of a prediction folder: ``maps/CASE_probabilities.npz``, or
    ``CASE.npz`` beside the label maps (``--save-probabilities nnunet``); ``DatasetError`` when
    there is neither."""
    files = {p.name[: -len("_probabilities.npz")]: p for p in sorted((pred_dir / "maps").glob("*_probabilities.npz"))}
    if not files:
        files = {p.name[: -len(".npz")]: p for p in sorted(pred_dir.glob("*.npz"))}
    if not files:
        raise DatasetError(pred_dir, "no maps/CASE_probabilities.npz: calibration needs the predicted probabilities "
                           "(volseg predict --save-probabilities; training's held-out validation keeps them)")
    return files


def read_probabilities(path: Path) -> np.ndarray:
    """fp16 (K, Z, Y, X) probabilities of one ``CASE_probabilities.npz`` (one-line errors)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            p = z["probabilities"]
    except (OSError, ValueError, KeyError, EOFError) as e:
        raise DatasetError(path, f"cannot read the probabilities: {e}") from None
    if p.ndim != 4 or not np.issubdtype(p.dtype, np.floating):
        raise DatasetError(path, f"expected float (K, Z, Y, X) probabilities, found {p.dtype} {p.shape}")
    return p


def _reference(ref_dir: Path, case_id: str, ending: str, shape: tuple) -> tuple[np.ndarray, tuple]:
    from volseg.io.nifti import read_image

    path = ref_dir / f"{case_id}{ending}"
    if not path.is_file():
        raise DatasetError(path, "reference label map not found for a predicted case")
    label, geometry = read_image(path)
    if tuple(label.shape) != tuple(shape):
        raise DatasetError(path, f"reference shape {tuple(label.shape)} differs from the predicted {tuple(shape)}")
    return np.asarray(label), tuple(float(s) for s in geometry.spacing)


def dense_pairs(pairs: Sequence[tuple[Path, Path]], task, ending: str, by_class: bool
                ) -> Iterator[tuple[str, dict[str, DenseCase]]]:
    """(case id, target → :class:`DenseCase`) for every case of every (prediction, reference) folder pair."""
    for pred_dir, ref_dir in pairs:
        for case_id, path in probability_files(pred_dir).items():
            probs = read_probabilities(path)
            label, spacing = _reference(ref_dir, case_id, ending, probs.shape[1:])
            targets = task.conformal_targets(probs, by_class)
            yield case_id, {name: DenseCase(case_id, score, np.isin(label, values), spacing)
                            for name, (score, values) in targets.items()}


def dense_case_losses(pairs, task, ending: str, risk: Risk, grid: np.ndarray, by: str | None,
                      size_edges: Sequence[float] | None = None, coverage: float = DEFAULT_COVERAGE,
                      connectivity: int = DEFAULT_CONNECTIVITY) -> tuple[list[CaseLosses], list[float] | None]:
    """Every case's losses; with ``by="size"`` and no ``size_edges``, edges at the terciles of the
    reference lesion volumes (mm³). Returns (cases, size edges used)."""
    if by == "size" and size_edges is None:
        volumes = [v for _, targets in dense_pairs(pairs, task, ending, False) for t in targets.values()
                   for v in reference_lesions(t.reference, t.spacing, connectivity)[2]]
        size_edges = default_size_edges(volumes)
    cases = []
    for case_id, targets in dense_pairs(pairs, task, ending, by == "class"):
        merged = CaseLosses(case_id, {}, {}, {})
        for name, case in targets.items():
            part = dense_losses(case, risk, grid, coverage, connectivity, size_edges if by == "size" else None,
                                group=name if by == "class" else "all")
            merged.losses.update(part.losses)
            merged.sizes.update(part.sizes)
            merged.fp.update(part.fp)
        cases.append(merged)
    return cases, (list(size_edges) if by == "size" else None)


def box_case_losses(pairs: Sequence[tuple[Path, Path]], grid: np.ndarray, by: str | None,
                    size_edges: Sequence[float] | None = None) -> tuple[list[CaseLosses], list[float] | None]:
    """Every scan's losses from ``PRED/candidates.csv`` against ``REF/annotations.csv`` (``REF`` may
    also be the annotations CSV itself; ``scans.txt`` / ``annotations_excluded.csv`` beside it
    are read when present)."""
    from volseg.evaluation.detection import read_points_csv, read_scan_list
    from volseg.evaluation.froc import match_scan

    scans: list[BoxCase] = []
    for pred_dir, ref_dir in pairs:
        candidates = read_points_csv(pred_dir / "candidates.csv", "probability")
        ann_file = ref_dir if ref_dir.is_file() else ref_dir / "annotations.csv"
        annotations = read_points_csv(ann_file, "diameter_mm")
        excl_file = ann_file.parent / "annotations_excluded.csv"
        excluded = read_points_csv(excl_file, "diameter_mm") if excl_file.is_file() else {}
        listed = ann_file.parent / "scans.txt"
        uids = read_scan_list(listed) if listed.is_file() else sorted(set(annotations) | set(candidates))
        for uid in uids:
            nodules = annotations.get(uid, np.zeros((0, 4)))
            m = match_scan(nodules, candidates.get(uid, np.zeros((0, 4))), excluded.get(uid))
            scans.append(BoxCase(uid, m.nodule_scores, m.fp_scores, np.asarray(nodules, np.float64)[:, 3]))
    if by == "size" and size_edges is None:
        size_edges = default_size_edges([d for s in scans for d in s.diameters_mm])
    cases = [box_losses(s, grid, size_edges if by == "size" else None) for s in scans]
    return cases, (list(size_edges) if by == "size" else None)
