"""Anchor shapes and detection levels for Retina U-Net, planned from object extents on the CPU.

Every decision here depends only on the training objects' bounding-box extents, so it is
made from the fingerprint in well under a second, without training or a GPU.

Anchors are shared relative shapes scaled per level: level ``l`` with total stride
``s_l`` (z, y, x) carries the anchors ``base_k * s_l`` for ``k = 0..K-1``. One detection
head, shared across levels, therefore sees the same relative shape for anchor ``k`` at
every level. The bases maximize the *mean best IoU*: for every training box, the IoU of
the best fitting anchor over all levels, boxes and anchors centre-aligned.

All shapes and extents are (z, y, x); extents in mm where named ``_mm``, otherwise in
voxels of the full-resolution grid at the target spacing.
"""

from __future__ import annotations

import numpy as np

ANCHORS_PER_LEVEL = 3
MIN_CELLS = 2.0           # a box is "at home" on the coarsest level where it spans this many cells per axis
MIN_LEVEL = 1             # full resolution carries the segmentation head only, by default
CANDIDATES = 128          # training boxes tried as initial bases (per level)
GREEDY_BOXES = 2048       # boxes scored while choosing the initial bases
REFINE_STEPS = (0.25, 0.1, 0.04, 0.015)   # log-size steps of the local refinement
REFINE_SWEEPS = 6


def instance_extents_mm(fingerprint: dict) -> np.ndarray:
    """Bounding-box extents of every training instance in the fingerprint.

    Args:
        fingerprint: A fingerprint as written by :func:`volseg.fingerprint.compute_fingerprint`;
            ``fingerprint["cases"][i]["objects"][j]["extent_mm"]`` is one object's extent.

    Returns:
        float64 (N, 3) extents (z, y, x) in mm, cases and objects in fingerprint order.

    Raises:
        ValueError: The fingerprint holds no cases, or no case holds an object.
    """
    cases = fingerprint.get("cases") or []
    extents = [obj["extent_mm"] for case in cases for obj in case.get("objects", [])]
    if not extents:
        raise ValueError(f"no training instances: none of the fingerprint's {len(cases)} cases holds an object "
                         "(cases[i]['objects'] empty or missing); detection planning needs labelled instances")
    return np.asarray(extents, dtype=float).reshape(-1, 3)


def level_strides(strides: list[list[int]]) -> list[list[int]]:
    """Total stride (z, y, x) of every network stage relative to full resolution.

    Args:
        strides: Per-stage strides (z, y, x) as :func:`volseg.planning.topology.determine_topology`
            returns them (``strides[0]`` is usually [1, 1, 1]).

    Returns:
        One cumulative product (z, y, x) per stage.
    """
    return np.cumprod(np.asarray(strides, dtype=int).reshape(-1, 3), axis=0).astype(int).tolist()


def centred_iou(extents: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """IoU of axis-aligned boxes that share a centre.

    Args:
        extents: (N, 3) box extents (z, y, x).
        anchors: (M, 3) anchor shapes (z, y, x), same unit as ``extents``.

    Returns:
        (N, M) IoU in [0, 1].
    """
    e, a = np.asarray(extents, dtype=float), np.asarray(anchors, dtype=float)
    inter = np.ones((len(e), len(a)))
    for axis in range(3):
        inter *= np.minimum(e[:, None, axis], a[None, :, axis])
    return inter / (np.prod(e, axis=1)[:, None] + np.prod(a, axis=1)[None, :] - inter)


def mean_best_iou(extents_vox: np.ndarray, anchor_shapes: np.ndarray) -> float:
    """Mean over boxes of the IoU with the best fitting anchor (centre-aligned).

    Args:
        extents_vox: (N, 3) box extents (z, y, x) in voxels, N >= 1.
        anchor_shapes: (M, 3) anchor shapes (z, y, x) in voxels, all levels together.

    Returns:
        The mean best IoU in [0, 1].

    Example:
        >>> mean_best_iou(np.array([[4, 8, 8]]), np.array([[4, 8, 8], [2, 2, 2]]))
        1.0
    """
    e = _check_extents(extents_vox, "extents_vox")
    a = _check_extents(anchor_shapes, "anchor_shapes")
    return float(centred_iou(e, a).max(axis=1).mean())


def choose_detection_levels(strides: list[list[int]], extents_vox: np.ndarray, min_cells: float = MIN_CELLS,
                            min_level: int = MIN_LEVEL) -> list[int]:
    """Network stages whose decoder outputs carry detection heads.

    Rule: a box's *home level* is the coarsest stage at which it still spans at least
    ``min_cells`` feature cells along every axis (stage 0 when it never does). The heads
    sit on the contiguous range from the lowest to the highest home level, clipped to
    ``[min_level, last stage]``: full resolution is left out by default because its
    anchors would outnumber those of all coarser levels together.

    Args:
        strides: Per-stage strides (z, y, x), ``strides[0]`` at full resolution.
        extents_vox: (N, 3) box extents (z, y, x) in voxels at the target spacing.
        min_cells: Cells per axis a box must span at its home level.
        min_level: Finest stage that may carry a head.

    Returns:
        Ascending, contiguous stage indices.
    """
    e = _check_extents(extents_vox, "extents_vox")
    totals = np.asarray(level_strides(strides), dtype=float)
    fits = (e[:, None, :] / totals[None, :, :]).min(axis=2) >= min_cells   # (N, stages)
    home = np.where(fits.any(axis=1), len(totals) - 1 - np.argmax(fits[:, ::-1], axis=1), 0)
    last = len(totals) - 1
    lo = min(max(int(home.min()), min_level), last)
    hi = min(max(int(home.max()), lo), last)
    return list(range(lo, hi + 1))


def plan_anchors(extents_mm: np.ndarray, spacing: list[float], level_strides: list[list[int]],
                 anchors_per_level: int = ANCHORS_PER_LEVEL, seed: int = 0) -> dict:
    """Anchor shapes per detection level that maximize the mean best IoU of the training boxes.

    Search: ``anchors_per_level`` base shapes (in cells) are chosen greedily among the
    training boxes divided by each level's stride (facility location: each pick adds the
    largest gain in mean best IoU), then refined by a coordinate search in log-size (each
    axis and all axes together, shrinking steps) on all boxes. Seeded sampling limits the
    candidates and the boxes scored greedily, so 10,000 boxes take well under a second.

    Args:
        extents_mm: (N, 3) box extents (z, y, x) in mm, e.g. from :func:`instance_extents_mm`.
        spacing: Target spacing (z, y, x) in mm.
        level_strides: Total stride (z, y, x) of each detection level, finest first.
        anchors_per_level: Anchors per level (the same at every level).
        seed: Seed of the candidate and box sampling.

    Returns:
        JSON-ready ``{"levels": [{"stride": [z, y, x], "shapes": [[z, y, x], ...]}, ...],
        "mean_best_iou": float, "num_boxes": int}``; shapes in voxels of the
        full-resolution grid, ordered by volume.

    Raises:
        ValueError: No boxes, non-positive extents or spacing, no levels, or ``anchors_per_level < 1``.

    Example:
        >>> plan = plan_anchors(np.array([[6.0, 6.0, 6.0], [12.0, 10.0, 10.0]]), [1.5, 1.0, 1.0],
        ...                     [[2, 2, 2], [4, 4, 4]], anchors_per_level=2)
        >>> plan["mean_best_iou"] > 0.99
        True
    """
    strides = _check_strides(level_strides)
    sp = np.asarray(spacing, dtype=float)
    if sp.shape != (3,) or not np.all(np.isfinite(sp) & (sp > 0)):
        raise ValueError(f"spacing: expected 3 positive values (z, y, x) in mm, got {spacing}")
    if anchors_per_level < 1:
        raise ValueError(f"anchors_per_level: expected at least 1, got {anchors_per_level}")
    ext = _check_extents(extents_mm, "extents_mm") / sp
    rng = np.random.default_rng(seed)
    bases = _greedy_bases(ext, strides, anchors_per_level, rng)
    bases = _refine_bases(ext, strides, bases)
    bases = bases[np.argsort(np.prod(bases, axis=1), kind="stable")]
    levels = [{"stride": s.astype(int).tolist(), "shapes": np.round(bases * s, 2).tolist()} for s in strides]
    shapes = np.asarray([shape for level in levels for shape in level["shapes"]])
    return {"levels": levels, "mean_best_iou": round(mean_best_iou(ext, shapes), 6), "num_boxes": int(len(ext))}


def determine_anchors(fingerprint: dict, spacing: list[float], strides: list[list[int]],
                      anchors_per_level: int = ANCHORS_PER_LEVEL, seed: int = 0) -> dict:
    """Detection levels and their anchors for a configuration.

    Args:
        fingerprint: The dataset fingerprint (object extents per case).
        spacing: Target spacing (z, y, x) in mm of the configuration.
        strides: Per-stage network strides (z, y, x) of the configuration.
        anchors_per_level: Anchors per level.
        seed: Seed of the anchor search.

    Returns:
        :func:`plan_anchors`' dict with ``"detection_levels"`` (stage indices) added and a
        ``"level"`` (stage index) in every entry of ``"levels"``.
    """
    extents_mm = instance_extents_mm(fingerprint)
    chosen = choose_detection_levels(strides, extents_mm / np.asarray(spacing, dtype=float))
    totals = level_strides(strides)
    plan = plan_anchors(extents_mm, spacing, [totals[i] for i in chosen], anchors_per_level, seed)
    for index, level in zip(chosen, plan["levels"]):
        level["level"] = index
    return {"detection_levels": chosen, **plan}


def _best_over_levels(ext: np.ndarray, base: np.ndarray, strides: np.ndarray) -> np.ndarray:
    """(N,) IoU of every box with the best level's copy of one base shape."""
    return centred_iou(ext, base[None, :] * strides).max(axis=1)


def _greedy_bases(ext: np.ndarray, strides: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` initial bases (cells) picked among the boxes divided by each level stride."""
    unique = np.unique(ext, axis=0)
    pool = unique if len(unique) <= CANDIDATES else unique[rng.choice(len(unique), CANDIDATES, replace=False)]
    candidates = (pool[:, None, :] / strides[None, :, :]).reshape(-1, 3)
    scored = ext if len(ext) <= GREEDY_BOXES else ext[rng.choice(len(ext), GREEDY_BOXES, replace=False)]
    gain = np.zeros((len(scored), len(candidates)))
    for s in strides:
        gain = np.maximum(gain, centred_iou(scored, candidates * s))
    best, chosen = np.zeros(len(scored)), []
    for _ in range(min(k, len(candidates))):
        total = np.maximum(best[:, None], gain).mean(axis=0)
        total[chosen] = -1.0
        pick = int(np.argmax(total))
        if chosen and total[pick] <= best.mean() + 1e-12:
            break   # every box is already matched as well as it can be
        chosen.append(pick)
        best = np.maximum(best, gain[:, pick])
    bases = [candidates[i] for i in chosen]
    while len(bases) < k:   # fewer distinct useful shapes than anchors: spread copies of the first by 2^(±j/2)
        j = len(bases)
        bases.append(bases[0] * 2.0 ** ((j + 1) // 2 * (0.5 if j % 2 else -0.5)))
    return np.asarray(bases, dtype=float)


def _refine_bases(ext: np.ndarray, strides: np.ndarray, bases: np.ndarray) -> np.ndarray:
    """Coordinate search on the log-sizes of ``bases`` that never lowers the mean best IoU."""
    log_b = np.log(bases)
    cols = np.stack([_best_over_levels(ext, np.exp(b), strides) for b in log_b], axis=1)   # (N, K)
    moves = np.vstack([np.eye(3), np.ones((1, 3))])
    moves = np.vstack([moves, -moves])
    for step in REFINE_STEPS:
        for _ in range(REFINE_SWEEPS):
            improved = False
            for k in range(len(log_b)):
                others = np.delete(cols, k, axis=1).max(axis=1) if len(log_b) > 1 else np.zeros(len(ext))
                current = np.maximum(others, cols[:, k]).mean()
                for move in moves:
                    trial = log_b[k] + step * move
                    col = _best_over_levels(ext, np.exp(trial), strides)
                    score = np.maximum(others, col).mean()
                    if score > current + 1e-12:
                        log_b[k], cols[:, k], current, improved = trial, col, score, True
            if not improved:
                break
    return np.exp(log_b)


def _check_extents(extents: np.ndarray, name: str) -> np.ndarray:
    e = np.asarray(extents, dtype=float)
    if e.ndim != 2 or e.shape[1] != 3:
        raise ValueError(f"{name}: expected an (N, 3) array of (z, y, x) extents, got shape {e.shape}")
    if len(e) == 0:
        raise ValueError(f"{name}: no boxes (shape {e.shape}); anchors need at least one training instance")
    if not np.all(np.isfinite(e) & (e > 0)):
        raise ValueError(f"{name}: extents must be finite and positive, got min {np.nanmin(e)}")
    return e


def _check_strides(strides: list[list[int]]) -> np.ndarray:
    s = np.asarray(strides, dtype=float)
    if s.ndim != 2 or s.shape[1] != 3 or len(s) == 0 or not np.all(s >= 1):
        raise ValueError(f"level_strides: expected one or more (z, y, x) strides >= 1, got {strides}")
    return s
