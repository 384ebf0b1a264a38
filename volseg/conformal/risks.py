"""Per-case losses on a threshold grid: what a calibrated threshold controls.

A *set* at threshold ``t`` is what a model calls positive at ``t``: the voxels whose score
(a probability map) is strictly above ``t``, or the boxes whose score is at least ``t``.
Each risk turns one case into a loss per grid threshold, in ``[0, 1]``, with the grid
ordered safest first (the convention of :mod:`volseg.conformal.crc`):

``lesion_fnr``  missed reference lesions / reference lesions. A reference lesion (a
                connected component of the reference, ``connectivity``) is found when more
                than ``coverage`` of its voxels lie in the set (MSSEG-2's α = 0.1 by
                default). Thresholds ascending; non-decreasing in ``t``.
``voxel_fnr``   reference voxels outside the set / reference voxels. Thresholds ascending.
``box_fnr``     reference nodules hit by no box of score ≥ ``t`` / reference nodules (a hit:
                the box centre within the nodule's radius, LUNA16). Thresholds ascending.
``lesion_fdr``  false-positive components of the set (no voxel in the reference) / all its
                components (0 when the set is empty). Thresholds descending; not monotone,
                so only Learn-then-Test calibrates it.

A case without any reference lesion (or nodule) has no defined false-negative rate; it is
left out of that risk's calibration (and of that group's, for Mondrian groups), so the
guarantee is about cases that have one. The price of a threshold is the number of
false-positive components (or boxes) per case.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from volseg.conformal.mondrian import size_bins

DEFAULT_GRID = tuple(round(0.01 * i, 2) for i in range(1, 100))  # probability thresholds 0.01 … 0.99
DEFAULT_COVERAGE = 0.1
DEFAULT_CONNECTIVITY = 6


@dataclass(frozen=True)
class Risk:
    """One risk: its name, words for reports, grid order and whether CRC may calibrate it."""

    name: str
    words: str
    ascending: bool  # grid of thresholds ascending (safest = lowest) or descending
    monotone: bool
    kind: str  # "dense" or "boxes"


RISKS = {r.name: r for r in (
    Risk("lesion_fnr", "per-case lesion-wise false-negative rate", True, True, "dense"),
    Risk("voxel_fnr", "per-case voxel-wise false-negative rate", True, True, "dense"),
    Risk("box_fnr", "per-scan nodule false-negative rate", True, True, "boxes"),
    Risk("lesion_fdr", "per-case lesion-wise false-discovery rate", False, False, "dense"),
)}


def get_risk(name: str) -> Risk:
    """The :class:`Risk` called ``name``; ``ValueError`` naming the choices otherwise."""
    if name not in RISKS:
        raise ValueError(f"unknown risk {name!r}; choose one of {', '.join(RISKS)}")
    return RISKS[name]


def ordered_grid(risk: Risk, thresholds: Sequence[float] = DEFAULT_GRID) -> np.ndarray:
    """The thresholds of ``risk`` ordered safest first: float64 (G,)."""
    t = np.unique(np.asarray(thresholds, dtype=np.float64))
    if t.size == 0 or not np.all(np.isfinite(t)):
        raise ValueError("the threshold grid must hold finite numbers")
    return t if risk.ascending else t[::-1]


@dataclass
class DenseCase:
    """One case's score map and reference mask for one target (a class, a region, all lesions).

    Attributes:
        case_id: The case.
        score: float32 (Z, Y, X) probability of the target.
        reference: bool (Z, Y, X) reference mask of the target.
        spacing: Voxel spacing (z, y, x), mm.
    """

    case_id: str
    score: np.ndarray
    reference: np.ndarray
    spacing: tuple[float, float, float]


@dataclass
class BoxCase:
    """One scan's boxes matched to its reference nodules (:func:`volseg.evaluation.froc.match_scan`).

    Attributes:
        case_id: The scan.
        nodule_scores: (N,) the highest score of a box hitting each nodule, NaN where none does.
        fp_scores: (M,) scores of the boxes that hit no nodule (nor an excluded finding).
        diameters_mm: (N,) nodule diameters, for size groups.
    """

    case_id: str
    nodule_scores: np.ndarray
    fp_scores: np.ndarray
    diameters_mm: np.ndarray


@dataclass
class CaseLosses:
    """A case's losses on the grid, per group, and its price.

    Attributes:
        case_id: The case.
        losses: group → float (G,) loss per grid threshold; groups the case has no reference
            lesion of are absent.
        fp: target → float (G,) false-positive components (boxes) of the target's set per grid
            threshold (``"all"`` for a single target).
        sizes: group → number of reference lesions (nodules) of the group in the case.
    """

    case_id: str
    losses: dict[str, np.ndarray]
    fp: dict[str, np.ndarray]
    sizes: dict[str, int]


def reference_lesions(reference: np.ndarray, spacing: Sequence[float],
                      connectivity: int = DEFAULT_CONNECTIVITY) -> tuple[np.ndarray, int, np.ndarray]:
    """``(labels int64 (Z, Y, X), number of lesions, volumes_mm3 (N,))`` of a reference mask."""
    import cc3d

    lab, n = cc3d.connected_components(np.ascontiguousarray(reference, dtype=bool), connectivity=connectivity,
                                       return_N=True)
    lab = lab.astype(np.int64, copy=False)
    sizes = np.bincount(lab[lab > 0], minlength=n + 1)[1:]
    return lab, int(n), sizes * float(np.prod(spacing))


def lesion_detection_scores(score: np.ndarray, labels: np.ndarray, n: int,
                            coverage: float = DEFAULT_COVERAGE) -> np.ndarray:
    """(N,) per reference lesion the score ``d`` such that the lesion is found at ``t`` exactly
    when ``t < d``: the ⌊coverage · size⌋ + 1-th highest score inside it (more than ``coverage``
    of its voxels must be above ``t``)."""
    if n == 0:
        return np.zeros(0, np.float64)
    inside = labels > 0
    ids, vals = labels[inside], score[inside].astype(np.float32)
    order = np.lexsort((-vals, ids))  # by lesion, highest score first
    ids, vals = ids[order], vals[order]
    starts = np.searchsorted(ids, np.arange(1, n + 1))
    sizes = np.bincount(ids, minlength=n + 1)[1:]
    need = np.floor(coverage * sizes).astype(np.int64) + 1
    need += need / sizes <= coverage  # float rounding of coverage · size: keep "need / size > coverage" exact
    return vals[starts + np.minimum(need, sizes) - 1]


def missed_fraction(detection_scores: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """(G,) fraction of findings with ``detection score <= t`` (missed) per threshold ``t``;
    NaN scores (never found) count as missed. Compared in float32, as prediction compares its
    float32 score maps with the threshold."""
    d = np.where(np.isnan(detection_scores), -np.inf, detection_scores).astype(np.float32)
    return (d[:, None] <= grid.astype(np.float32)[None, :]).mean(axis=0)


def component_counts(score: np.ndarray, reference: np.ndarray, grid: np.ndarray,
                     connectivity: int = DEFAULT_CONNECTIVITY) -> tuple[np.ndarray, np.ndarray]:
    """``(components, false-positive components)`` of ``score > t`` per grid threshold, int64 (G,).

    A component is a false positive when no voxel of it is in the reference. The work is
    restricted to the bounding box of ``score > min(grid)``.
    """
    import cc3d

    n_all, n_fp = np.zeros(grid.size, np.int64), np.zeros(grid.size, np.int64)
    grid = grid.astype(np.float32)
    score = score.astype(np.float32, copy=False)
    low = score > grid.min()
    if not low.any():
        return n_all, n_fp
    box = tuple(slice(int(w.min()), int(w.max()) + 1) for w in np.nonzero(low))
    s, ref = score[box], reference[box]
    for j, t in enumerate(grid):
        lab, n = cc3d.connected_components(np.ascontiguousarray(s > t), connectivity=connectivity, return_N=True)
        if n == 0:
            continue
        hit = np.zeros(n + 1, bool)
        hit[np.unique(lab[ref & (lab > 0)])] = True
        n_all[j], n_fp[j] = n, n - int(hit[1:].sum())
    return n_all, n_fp


def size_group_names(edges: Sequence[float], unit: str) -> list[str]:
    """Names of the size bins cut at ``edges`` (:func:`volseg.conformal.mondrian.bin_names`; ``["all"]`` without edges)."""
    from volseg.conformal.mondrian import bin_names

    return bin_names(edges, unit) if len(edges) else ["all"]


def dense_losses(case: DenseCase, risk: Risk, grid: np.ndarray, coverage: float = DEFAULT_COVERAGE,
                 connectivity: int = DEFAULT_CONNECTIVITY, size_edges: Sequence[float] | None = None,
                 group: str = "all") -> CaseLosses:
    """Losses of a dense case on ``grid`` (ordered as :func:`ordered_grid`), in one group or,
    with ``size_edges`` (mm³), one group per reference-lesion size bin."""
    labels, n, volumes = reference_lesions(case.reference, case.spacing, connectivity)
    n_all, n_fp = component_counts(case.score, case.reference, grid, connectivity)
    names = [group] if size_edges is None else size_group_names(size_edges, "mm3")
    members = np.zeros(n, np.int64) if size_edges is None else size_bins(volumes, size_edges)
    losses, sizes = {}, {}
    if risk.name == "lesion_fdr":
        losses[group] = np.where(n_all > 0, n_fp / np.maximum(n_all, 1), 0.0)
        sizes[group] = n
        return CaseLosses(case.case_id, losses, {group: n_fp.astype(np.float64)}, sizes)
    d = lesion_detection_scores(case.score, labels, n, coverage) if risk.name == "lesion_fnr" else None
    for g, name in enumerate(names):
        chosen = np.flatnonzero(members == g)
        if chosen.size == 0:
            continue
        sizes[name] = int(chosen.size)
        if risk.name == "lesion_fnr":
            losses[name] = missed_fraction(d[chosen], grid)
        else:  # voxel_fnr over the voxels of the group's lesions
            in_group = np.isin(labels, chosen + 1)
            losses[name] = missed_fraction(case.score[in_group], grid)
    return CaseLosses(case.case_id, losses, {group: n_fp.astype(np.float64)}, sizes)


def box_losses(case: BoxCase, grid: np.ndarray, size_edges: Sequence[float] | None = None,
               group: str = "all") -> CaseLosses:
    """Losses of one scan's boxes on ``grid`` (ascending score thresholds), by nodule diameter
    bins (mm) when ``size_edges`` is given."""
    fp = (case.fp_scores[:, None] >= grid[None, :]).sum(axis=0).astype(np.float64)
    names = [group] if size_edges is None else size_group_names(size_edges, "mm")
    members = (np.zeros(case.nodule_scores.size, np.int64) if size_edges is None
               else size_bins(case.diameters_mm, size_edges))
    losses, sizes = {}, {}
    for g, name in enumerate(names):
        chosen = np.flatnonzero(members == g)
        if chosen.size:
            # a box of score >= t hits: missed when the best hitting score is < t
            s = np.where(np.isnan(case.nodule_scores[chosen]), -np.inf, case.nodule_scores[chosen])
            losses[name] = (s[:, None] < grid[None, :]).mean(axis=0)
            sizes[name] = int(chosen.size)
    return CaseLosses(case.case_id, losses, {group: fp}, sizes)


def default_size_edges(values: Sequence[float], bins: int = 3) -> list[float]:
    """Edges cutting ``values`` (lesion volumes or diameters) into ``bins`` groups of about equal
    count, rounded to two significant digits."""
    v = np.asarray(values, np.float64)
    if v.size < bins:
        return []
    qs = np.quantile(v, np.arange(1, bins) / bins)
    edges = sorted({float(f"{q:.2g}") for q in qs if q > 0})
    return [e for e in edges if math.isfinite(e)]
