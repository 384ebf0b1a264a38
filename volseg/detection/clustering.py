"""Fusing detections: NMS per model, weighted box clustering across tiles, mirrors and folds, top-k.

Boxes are (z0, y0, x0, z1, y1, x1) in voxels, half-open (see :mod:`volseg.detection.boxes`).
Functions accept numpy arrays or torch tensors (any device) and return numpy arrays:
fused detections go on to post-processing and JSON export on the CPU.

Typical use for one case::

    # each model's boxes: tiles shifted to volume coordinates, mirrors flipped back
    per_model = [d.take(nms(d.boxes, d.scores, 0.1, d.labels, max_boxes=1000)) for d in model_outputs]
    fused = weighted_box_clustering(concat_detections(per_model), iou_threshold=0.5,
                                    expected=len(per_model))
    final = select_detections(fused, score_threshold=0.1, max_detections=100)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from volseg.detection.boxes import Array, check_boxes, to_numpy
from volseg.detection.greedy import greedy_clusters


@dataclass(frozen=True)
class Detections:
    """Boxes of one case with their scores, classes and weights.

    Attributes:
        boxes: float64 (N, 6) boxes (z0, y0, x0, z1, y1, x1) in voxels, half-open.
        scores: float64 (N,) scores in [0, 1].
        labels: int64 (N,) class indices (0-based foreground classes).
        weights: float64 (N,) positive prior weights (e.g. a tile-centre weight); after
            :func:`weighted_box_clustering`, the summed weight of each cluster's members.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    weights: np.ndarray

    @classmethod
    def from_arrays(cls, boxes: Array, scores: Array, labels: Array | None = None,
                    weights: Array | None = None) -> "Detections":
        """Validated numpy detections; ``labels`` default to 0, ``weights`` to 1.

        Raises:
            ValueError: Shapes differ, boxes are not (N, 6), scores are negative or not
                finite, or weights are not positive.
        """
        check_boxes(boxes)
        b = to_numpy(boxes).astype(np.float64).reshape(-1, 6)
        n = len(b)
        s = to_numpy(scores).astype(np.float64).reshape(-1)
        lab = np.zeros(n, np.int64) if labels is None else to_numpy(labels).astype(np.int64).reshape(-1)
        w = np.ones(n) if weights is None else to_numpy(weights).astype(np.float64).reshape(-1)
        if not len(s) == len(lab) == len(w) == n:
            raise ValueError(f"detections: {n} boxes but {len(s)} scores, {len(lab)} labels, {len(w)} weights")
        if not np.all(np.isfinite(s) & (s >= 0)):
            raise ValueError("scores: expected finite values >= 0")
        if not np.all(np.isfinite(w) & (w > 0)):
            raise ValueError("weights: expected finite positive values")
        return cls(b, s, lab, w)

    def __len__(self) -> int:
        return len(self.boxes)

    def take(self, index: Array) -> "Detections":
        """The detections at ``index`` (indices or a boolean mask), in that order."""
        i = to_numpy(index)
        i = i if i.dtype == bool else i.astype(np.int64).reshape(-1)
        return Detections(self.boxes[i].reshape(-1, 6), self.scores[i], self.labels[i], self.weights[i])


def concat_detections(parts: Sequence[Detections]) -> Detections:
    """All detections of ``parts`` (e.g. the models of an ensemble) in one set, in order."""
    if not parts:
        return Detections.from_arrays(np.zeros((0, 6)), np.zeros(0))
    return Detections(np.concatenate([p.boxes for p in parts]).reshape(-1, 6), np.concatenate([p.scores for p in parts]),
                      np.concatenate([p.labels for p in parts]), np.concatenate([p.weights for p in parts]))


def nms(boxes: Array, scores: Array, iou_threshold: float, labels: Array | None = None,
        max_boxes: int = -1) -> np.ndarray:
    """Non-maximum suppression within each class (MONAI's ``non_max_suppression`` per class).

    A box is dropped when its IoU with a higher-scoring kept box of the same class is
    greater than ``iou_threshold``; equal scores keep the earlier box.

    Args:
        boxes: (N, 6) boxes (z0, y0, x0, z1, y1, x1) in voxels, half-open.
        scores: (N,) scores.
        iou_threshold: IoU above which the lower-scoring box is dropped.
        labels: (N,) class indices; one class when ``None``.
        max_boxes: Keep at most this many (over all classes); -1 keeps all.

    Returns:
        int64 (K,) indices of the kept boxes, highest score first.
    """
    from monai.data.box_utils import non_max_suppression

    check_boxes(boxes)
    b = torch.as_tensor(np.ascontiguousarray(to_numpy(boxes)), dtype=torch.float64)
    s = torch.as_tensor(np.ascontiguousarray(to_numpy(scores)), dtype=torch.float64).reshape(-1)
    if len(s) != len(b):
        raise ValueError(f"nms: {len(b)} boxes but {len(s)} scores")
    lab = np.zeros(len(b), np.int64) if labels is None else to_numpy(labels).astype(np.int64).reshape(-1)
    keep = []
    for c in np.unique(lab):
        idx = np.flatnonzero(lab == c)
        kept = non_max_suppression(b[idx], s[idx], iou_threshold, max_proposals=max_boxes)
        keep.append(idx[kept.numpy().astype(np.int64)])
    keep_all = np.concatenate(keep) if keep else np.zeros(0, np.int64)
    order = np.argsort(-s.numpy()[keep_all], kind="stable")
    keep_all = keep_all[order]
    return keep_all if max_boxes < 0 else keep_all[:max_boxes]


def weighted_box_clustering(detections: Detections, iou_threshold: float = 0.5, expected: int = 1,
                            top: int = -1) -> Detections:
    """Weighted box clustering (WBC), class by class.

    Repeatedly, the highest-scoring unclustered box and every unclustered box of its class
    with IoU >= ``iou_threshold`` with it form a cluster. With member scores ``s_i``,
    weights ``w_i`` and ``n`` members:

    * box: the mean of the member boxes weighted by ``s_i * w_i`` (by ``w_i`` when all
      member scores are 0);
    * score: ``sum(w_i s_i) / (sum(w_i) + max(0, expected - n) * mean(w_i))``, the weighted
      mean score where every expected but missing prediction counts as a member with score
      0 and the members' mean weight. With unit weights this is ``sum(s_i) / max(n, expected)``,
      so a box found by one of five mirrors × folds scores a fifth of one found by all;
    * weight: ``sum(w_i)``, so fused sets can be fused again.

    Args:
        detections: Boxes of one case from all tiles, mirrors and models (tiles shifted to
            volume coordinates, mirrors flipped back).
        iou_threshold: IoU with the cluster's top box needed to join it, in (0, 1].
        expected: Predictions expected per object (e.g. models × mirrors); >= 1.
        top: When >= 1, only the clusters that can be among the ``top`` highest fused scores
            of their class are formed: clustering stops once no later cluster can reach them
            (a fused score never exceeds its top box's). The ``top`` highest of the result are
            those of the full clustering, so a later selection of at most ``top`` boxes is
            unchanged. -1 (default) forms every cluster.

    Returns:
        One detection per cluster, highest score first.

    Example:
        >>> d = Detections.from_arrays(np.array([[0, 0, 0, 10, 10, 10], [0, 0, 0, 10, 10, 12.]]), np.array([0.9, 0.3]))
        >>> fused = weighted_box_clustering(d, 0.5, expected=2)
        >>> round(float(fused.boxes[0, 5]), 3), round(float(fused.scores[0]), 3)
        (10.5, 0.6)
    """
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold: expected a value in (0, 1], got {iou_threshold}")
    if expected < 1:
        raise ValueError(f"expected: expected at least 1 prediction per object, got {expected}")
    if not isinstance(top, int) or isinstance(top, bool) or not (top >= 1 or top == -1):
        raise ValueError(f"top: expected an integer >= 1 or -1 (all clusters), got {top!r}")
    parts = []
    for c in np.unique(detections.labels):
        part = detections.take(np.flatnonzero(detections.labels == c))
        boxes, scores, weights = _wbc_one_class(part.boxes, part.scores, part.weights, iou_threshold, expected, top)
        parts.append(Detections(boxes, scores, np.full(len(scores), c, np.int64), weights))
    fused = concat_detections(parts)
    return fused.take(np.argsort(-fused.scores, kind="stable"))


def _wbc_one_class(boxes: np.ndarray, scores: np.ndarray, weights: np.ndarray, iou_threshold: float,
                   expected: int, top: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """WBC of one class: (M, 6) boxes, (M,) scores, (M,) summed weights, in cluster order."""
    order = np.argsort(-scores, kind="stable")
    b, s, w = boxes[order], scores[order], weights[order]
    out_boxes, out_scores, out_weights = [], [], []

    def fuse(members: np.ndarray) -> float:
        ms, mw = s[members], w[members]
        coord_w = ms * mw if (ms * mw).sum() > 0 else mw
        out_boxes.append((coord_w[:, None] * b[members]).sum(axis=0) / coord_w.sum())
        missing = max(0, expected - len(members))
        out_scores.append(float((mw * ms).sum() / (mw.sum() + missing * mw.mean())))
        out_weights.append(float(mw.sum()))
        return out_scores[-1]

    if top >= 1:       # the early stop needs each fused score as its cluster is formed
        greedy_clusters(b, s, iou_threshold, fuse, top)
        return np.asarray(out_boxes).reshape(-1, 6), np.asarray(out_scores), np.asarray(out_weights)
    clusters: list[np.ndarray] = []
    greedy_clusters(b, s, iou_threshold, lambda members: clusters.append(members) or 0.0)
    # Most clusters of a tile are single boxes: fused all at once, with the operations ``fuse``
    # performs on one member (a sum or mean of one value is that value), so bit for bit the same.
    first = np.fromiter((c[0] for c in clusters), np.int64, len(clusters))
    single = np.fromiter((len(c) == 1 for c in clusters), bool, len(clusters))
    cb, cs, cw = b[first], s[first], w[first]
    coord_w = np.where(cs * cw > 0, cs * cw, cw)[:, None]
    fused_b, fused_s, fused_w = (coord_w * cb) / coord_w, (cw * cs) / (cw + max(0, expected - 1) * cw), cw.copy()
    for i in np.flatnonzero(~single):
        fuse(clusters[i])
        fused_b[i], fused_s[i], fused_w[i] = out_boxes[-1], out_scores[-1], out_weights[-1]
    return fused_b.reshape(-1, 6), fused_s, fused_w


def top_k(scores: Array, k: int, score_threshold: float = 0.0) -> np.ndarray:
    """Indices of the at most ``k`` highest scores that are >= ``score_threshold``.

    Args:
        scores: (N,) scores.
        k: How many to keep at most; -1 keeps all above the threshold.
        score_threshold: Lowest score kept.

    Returns:
        int64 (K,) indices, highest score first (ties: earlier index first).
    """
    s = to_numpy(scores).reshape(-1)
    order = np.argsort(-s, kind="stable")
    order = order[s[order] >= score_threshold]
    return (order if k < 0 else order[:k]).astype(np.int64)


def select_detections(detections: Detections, score_threshold: float = 0.0, max_detections: int = 100) -> Detections:
    """The at most ``max_detections`` highest-scoring detections with score >= ``score_threshold``.

    Args:
        detections: Detections of one case.
        score_threshold: Lowest score kept.
        max_detections: How many to keep at most per case; -1 keeps all.

    Returns:
        The selected detections, highest score first.
    """
    return detections.take(top_k(detections.scores, max_detections, score_threshold))
