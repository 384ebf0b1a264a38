"""The greedy loops of NMS and weighted box clustering, with their IoUs computed in blocks.

Both fusions visit the boxes in score order and compare the current box with every later
(or every still free) box. Asking for one IoU row per visited box costs one numpy call of
O(N) per box, thousands of times per case. Here the IoUs of a set are computed once, as the
upper triangle of an (N, N) matrix in row blocks (at most :data:`DENSE_MAX` boxes; larger sets fall back to one
row at a time), and the loop only reads rows of it. The arithmetic per pair is that of
:func:`~volseg.evaluation.detection.box_iou_3d`, so every decision and every fused value is
the one the row-at-a-time loop gives, bit for bit.

Boxes are (z0, y0, x0, z1, y1, x1) in voxels, half-open (see :mod:`volseg.detection.boxes`).
"""

from __future__ import annotations

import heapq
from typing import Callable

import numpy as np

# Largest set whose (N, N) IoU matrix is held at once (float64: 128 MiB at 4096).
DENSE_MAX = 4096
# Pairs per block while filling the matrix: each (rows, N) float64 temporary holds 512 KiB,
# which stays in cache.
BLOCK_PAIRS = 2 ** 16

__all__ = ["DENSE_MAX", "iou_rows", "iou_matrix", "greedy_nms", "greedy_clusters"]


def iou_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float64 (n, m) IoU of every pair of (n, 6) and (m, 6) valid boxes, without validation.

    The values of :func:`~volseg.evaluation.detection.box_iou_3d` bit for bit (0 where the
    union is empty), computed axis by axis on (n, m) planes instead of reducing (n, m, 3)
    arrays over their short last axis, which numpy does slowly; for boxes already checked,
    in loops that call it many times.
    """
    inter = None
    for k in range(3):
        extent = np.clip(np.minimum(a[:, None, k + 3], b[None, :, k + 3]) - np.maximum(a[:, None, k], b[None, :, k]),
                         0.0, None)
        inter = extent if inter is None else inter * extent     # ((z * y) * x), the order of prod
    vol_a = (a[:, 3] - a[:, 0]) * (a[:, 4] - a[:, 1]) * (a[:, 5] - a[:, 2])
    vol_b = (b[:, 3] - b[:, 0]) * (b[:, 4] - b[:, 1]) * (b[:, 5] - b[:, 2])
    union = vol_a[:, None] + vol_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def iou_matrix(boxes: np.ndarray) -> np.ndarray:
    """float64 (N, N) IoU of (N, 6) valid boxes, for every pair ``i <= j``, filled in row blocks.

    Each block of rows is computed against the columns from its first row on, so the upper
    triangle is complete and most of the lower one is 0: both greedy loops visit the boxes in
    order and compare box ``i`` only with later ones.
    """
    n = len(boxes)
    out = np.zeros((n, n), dtype=np.float64)
    step = max(1, BLOCK_PAIRS // max(n, 1))
    for i in range(0, n, step):
        out[i:i + step, i:] = iou_rows(boxes[i:i + step], boxes[i:])
    return out


def greedy_nms(boxes: np.ndarray, labels: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Keep mask of greedy NMS over boxes already sorted by descending score.

    Box ``i`` is dropped when its IoU with an earlier kept box of its class is greater than
    ``iou_threshold``.

    Args:
        boxes: float64 (N, 6) valid boxes, highest score first.
        labels: (N,) class indices.
        iou_threshold: IoU above which the later box is dropped.

    Returns:
        bool (N,) mask of the kept boxes.
    """
    n = len(boxes)
    keep = np.ones(n, dtype=bool)
    if n > DENSE_MAX:
        for i in range(n - 1):
            if keep[i]:
                iou = iou_rows(boxes[i:i + 1], boxes[i + 1:])[0]
                keep[i + 1:] &= ~((iou > iou_threshold) & (labels[i + 1:] == labels[i]))
        return keep
    suppress = (iou_matrix(boxes) > iou_threshold) & (labels[:, None] == labels[None, :])
    for i in range(n - 1):
        if keep[i]:
            keep[i + 1:] &= ~suppress[i, i + 1:]
    return keep


def greedy_clusters(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float,
                    fuse: Callable[[np.ndarray], float], top: int = -1) -> None:
    """Form the clusters of weighted box clustering over one class's boxes sorted by descending score.

    Repeatedly the first free box and every free box with IoU >= ``iou_threshold`` with it
    form a cluster (the first box always belongs to its own cluster, even with zero volume).

    Args:
        boxes: float64 (N, 6) valid boxes, highest score first.
        scores: (N,) their scores, descending.
        iou_threshold: IoU with the cluster's first box needed to join it.
        fuse: Called with each cluster's member indices (int64, ascending) as it is formed,
            in cluster order; returns the cluster's fused score, which must not exceed the
            score of its first box.
        top: When >= 1, stop once ``top`` clusters are formed and the next free box scores
            below the ``top``-th highest fused score so far: no later cluster can then be
            among the ``top`` highest (a fused score never exceeds its first box's). -1 forms
            every cluster.
    """
    n = len(boxes)
    dense = iou_matrix(boxes) if n <= DENSE_MAX else None
    free = np.ones(n, dtype=bool)
    best: list[float] = []           # min-heap of the ``top`` highest fused scores so far
    i = 0
    while i < n:
        if not free[i]:
            i += 1
            continue
        if top >= 1 and len(best) >= top and scores[i] * (1.0 + 1e-12) < best[0]:   # margin: rounding of fuse
            break
        if dense is not None:
            members = np.flatnonzero(free & (dense[i] >= iou_threshold))
        else:
            idx = np.flatnonzero(free)
            members = idx[iou_rows(boxes[i:i + 1], boxes[idx])[0] >= iou_threshold]
        if len(members) == 0 or members[0] != i:
            members = np.union1d(members, [i])
        free[members] = False
        fused = float(fuse(members))
        if top >= 1:
            if len(best) < top:
                heapq.heappush(best, fused)
            elif fused > best[0]:
                heapq.heapreplace(best, fused)
        i += 1
