"""The block-wise greedy loops give the row-at-a-time results, bit for bit, and ``top`` stops early exactly."""

import numpy as np
import pytest

from volseg.detection import greedy
from volseg.detection.aggregation import tile_nms
from volseg.detection.clustering import Detections, select_detections, weighted_box_clustering
from volseg.evaluation.detection import box_iou_3d


def _boxes(n: int, seed: int, size: float = 8.0, extent: float = 40.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lo = rng.uniform(0, extent, (n, 3))
    return np.concatenate([lo, lo + rng.uniform(0.5, size, (n, 3))], axis=1)


def _nms_row_by_row(boxes, scores, labels, thr):
    order = np.argsort(-scores, kind="stable")
    b, lab = boxes[order], labels[order]
    keep = np.ones(len(b), bool)
    for i in range(len(b)):
        if keep[i]:
            iou = box_iou_3d(b[i:i + 1], b[i + 1:])[0]
            keep[i + 1:] &= ~((iou > thr) & (lab[i + 1:] == lab[i]))
    return order[keep]


def _wbc_row_by_row(b, s, w, thr, expected):
    """WBC of one class as the definition reads: one IoU row per cluster, against the free boxes."""
    order = np.argsort(-s, kind="stable")
    b, s, w = b[order], s[order], w[order]
    free = np.ones(len(b), bool)
    out = []
    while free.any():
        idx = np.flatnonzero(free)
        members = np.union1d(idx[box_iou_3d(b[idx[0]:idx[0] + 1], b[idx])[0] >= thr], [idx[0]])
        free[members] = False
        ms, mw = s[members], w[members]
        cw = ms * mw if (ms * mw).sum() > 0 else mw
        out.append(((cw[:, None] * b[members]).sum(0) / cw.sum(),
                    (mw * ms).sum() / (mw.sum() + max(0, expected - len(members)) * mw.mean()), mw.sum()))
    return out


def test_iou_rows_equal_box_iou_3d_bit_for_bit(monkeypatch):
    a, b = _boxes(50, 0), _boxes(70, 1)
    b[3] = [5, 5, 5, 5, 9, 9]   # zero volume: union may be 0
    assert np.array_equal(greedy.iou_rows(a, b), box_iou_3d(a, b))
    monkeypatch.setattr(greedy, "BLOCK_PAIRS", 300)   # blocks of 6 rows
    assert np.array_equal(np.triu(greedy.iou_matrix(a)), np.triu(box_iou_3d(a, a)))   # every pair i <= j


@pytest.mark.parametrize("dense_max", [greedy.DENSE_MAX, 0])
def test_nms_equals_the_row_by_row_loop(monkeypatch, dense_max):
    monkeypatch.setattr(greedy, "DENSE_MAX", dense_max)
    monkeypatch.setattr(greedy, "BLOCK_PAIRS", 1000)   # several blocks
    boxes, rng = _boxes(400, 2, size=12, extent=20), np.random.default_rng(3)
    scores, labels = rng.uniform(0, 1, 400).round(2), rng.integers(0, 2, 400)   # ties included
    for thr in (0.1, 0.5):
        expected = _nms_row_by_row(boxes, scores, labels, thr)
        assert 0 < len(expected) < 400
        assert np.array_equal(tile_nms(boxes, scores, labels, thr), expected)


@pytest.mark.parametrize("dense_max", [greedy.DENSE_MAX, 0])
def test_wbc_equals_the_definition_bit_for_bit(monkeypatch, dense_max):
    monkeypatch.setattr(greedy, "DENSE_MAX", dense_max)
    boxes, rng = _boxes(300, 4, size=10, extent=25), np.random.default_rng(5)
    scores, weights = rng.uniform(0, 1, 300).round(2), rng.uniform(0.1, 1, 300)
    fused = weighted_box_clustering(Detections.from_arrays(boxes, scores, None, weights), 0.2, expected=2)
    ref = _wbc_row_by_row(boxes, scores, weights, 0.2, 2)
    assert 1 < len(ref) < 300 and len(fused) == len(ref)
    order = np.argsort([-r[1] for r in ref], kind="stable")
    for j, field in enumerate(("boxes", "scores", "weights")):
        assert np.array_equal(getattr(fused, field), np.array([ref[i][j] for i in order]))


@pytest.mark.parametrize("top", [1, 5, 40])
def test_top_stops_early_and_keeps_the_top_of_the_full_clustering(top):
    boxes, rng = _boxes(2000, 6, size=6, extent=60), np.random.default_rng(7)
    det = Detections.from_arrays(boxes, rng.uniform(0, 1, 2000), rng.integers(0, 2, 2000), rng.uniform(0.2, 1, 2000))
    full = weighted_box_clustering(det, 0.2, expected=2)
    early = weighted_box_clustering(det, 0.2, expected=2, top=top)
    assert len(early) < len(full)   # it stopped early
    a, b = select_detections(full, 0.0, top), select_detections(early, 0.0, top)
    for field in ("boxes", "scores", "labels", "weights"):
        assert np.array_equal(getattr(a, field), getattr(b, field))


def test_top_must_be_positive_or_all():
    det = Detections.from_arrays(_boxes(3, 8), np.array([0.5, 0.4, 0.3]))
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="top"):
            weighted_box_clustering(det, 0.5, top=bad)
