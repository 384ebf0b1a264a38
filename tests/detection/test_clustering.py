"""NMS, weighted box clustering and top-k on hand-made detections with hand-computed results."""

import numpy as np
import pytest
import torch

from volseg.detection.boxes import flip_boxes
from volseg.detection.clustering import (Detections, concat_detections, nms, select_detections, top_k,
                                         weighted_box_clustering)

A = [0, 0, 0, 10, 10, 10]
A_SHIFTED = [0, 0, 1, 10, 10, 11]      # IoU with A: 900 / 1100
A_LONGER = [0, 0, 0, 10, 10, 12]       # IoU with A: 1000 / 1200
FAR = [20, 20, 20, 24, 24, 24]


def test_nms_by_hand():
    boxes = np.array([A, A_SHIFTED, FAR], dtype=float)
    scores = np.array([0.9, 0.8, 0.7])
    assert nms(boxes, scores, 0.5).tolist() == [0, 2]
    assert nms(boxes, scores, 0.85).tolist() == [0, 1, 2]
    assert nms(boxes, scores, 0.5, max_boxes=1).tolist() == [0]
    # lower-scoring first in the input: indices still come back highest score first
    assert nms(boxes[::-1], scores[::-1], 0.5).tolist() == [2, 0]   # negative strides too


def test_nms_is_per_class_and_takes_torch():
    boxes = torch.tensor([A, A_SHIFTED, FAR], dtype=torch.float32)
    keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5, labels=torch.tensor([0, 1, 0]))
    assert isinstance(keep, np.ndarray) and keep.tolist() == [0, 1, 2]


def test_nms_of_nothing():
    keep = nms(np.zeros((0, 6)), np.zeros(0), 0.5)
    assert keep.shape == (0,) and keep.dtype == np.int64


def test_wbc_by_hand():
    det = Detections.from_arrays(np.array([A, A_LONGER, FAR]), np.array([0.9, 0.6, 0.3]),
                                 weights=np.array([1.0, 0.5, 1.0]))
    fused = weighted_box_clustering(det, iou_threshold=0.5, expected=3)
    # cluster {A, A_LONGER}: coordinates weighted by score * weight = 0.9 and 0.3 -> x1 = (9 + 3.6) / 1.2
    # score: (0.9 * 1 + 0.6 * 0.5) / (1 + 0.5 + one missing member at the mean weight 0.75) = 1.2 / 2.25
    # cluster {FAR}: 0.3 / (1 + 2 missing * 1)
    np.testing.assert_allclose(fused.boxes, [[0, 0, 0, 10, 10, 10.5], FAR])
    np.testing.assert_allclose(fused.scores, [1.2 / 2.25, 0.1])
    np.testing.assert_allclose(fused.weights, [1.5, 1.0])
    assert fused.labels.tolist() == [0, 0]


def test_wbc_without_missing_members_is_the_weighted_mean():
    det = Detections.from_arrays(np.array([A, A_LONGER]), np.array([0.9, 0.6]), weights=np.array([1.0, 0.5]))
    fused = weighted_box_clustering(det, 0.5, expected=1)
    np.testing.assert_allclose(fused.scores, [1.2 / 1.5])
    fused = weighted_box_clustering(det, 0.5, expected=2)   # both expected members present: no penalty
    np.testing.assert_allclose(fused.scores, [1.2 / 1.5])


def test_wbc_weights_move_the_box():
    det = Detections.from_arrays(np.array([[0, 0, 0, 8, 8, 8], [0, 0, 0, 8, 8, 12]]), np.array([0.5, 0.5]),
                                 weights=np.array([3.0, 1.0]))
    fused = weighted_box_clustering(det, 0.5)
    np.testing.assert_allclose(fused.boxes, [[0, 0, 0, 8, 8, 9]])   # (3 * 8 + 1 * 12) / 4


def test_wbc_threshold_is_inclusive():
    det = Detections.from_arrays(np.array([[0, 0, 0, 2, 2, 2], [0, 0, 0, 2, 2, 4]]), np.array([0.8, 0.4]))  # IoU 0.5
    assert len(weighted_box_clustering(det, 0.5)) == 1
    assert len(weighted_box_clustering(det, 0.51)) == 2


def test_wbc_clusters_around_the_top_box_not_by_chains():
    # along x: [0, 10), [3, 13), [6, 16): neighbours overlap 7/13 = 0.54, the ends 4/16 = 0.25
    boxes = np.array([[0, 0, 0, 10, 10, 10], [0, 0, 3, 10, 10, 13], [0, 0, 6, 10, 10, 16]])
    fused = weighted_box_clustering(Detections.from_arrays(boxes, np.array([0.9, 0.8, 0.7])), 0.5, expected=2)
    np.testing.assert_allclose(fused.boxes[:, 2], [(0.9 * 0 + 0.8 * 3) / 1.7, 6])
    np.testing.assert_allclose(fused.scores, [1.7 / 2, 0.7 / 2])


def test_wbc_keeps_classes_apart():
    det = Detections.from_arrays(np.array([A, A]), np.array([0.4, 0.8]), labels=np.array([2, 0]))
    fused = weighted_box_clustering(det, 0.5)
    assert fused.labels.tolist() == [0, 2] and fused.scores.tolist() == [0.8, 0.4]


def test_wbc_with_zero_scores_averages_by_weight():
    det = Detections.from_arrays(np.array([[0, 0, 0, 4, 4, 4], [0, 0, 0, 4, 4, 6]]), np.zeros(2),
                                 weights=np.array([1.0, 1.0]))
    fused = weighted_box_clustering(det, 0.5)
    np.testing.assert_allclose(fused.boxes, [[0, 0, 0, 4, 4, 5]])
    assert fused.scores.tolist() == [0.0]


def test_wbc_of_nothing_and_bad_arguments():
    empty = Detections.from_arrays(np.zeros((0, 6)), np.zeros(0))
    fused = weighted_box_clustering(empty)
    assert fused.boxes.shape == (0, 6) and fused.scores.shape == (0,)
    with pytest.raises(ValueError, match="iou_threshold"):
        weighted_box_clustering(empty, iou_threshold=0.0)
    with pytest.raises(ValueError, match="expected"):
        weighted_box_clustering(empty, expected=0)


def test_detections_validate_their_arrays():
    with pytest.raises(ValueError, match="3 boxes but 2 scores"):
        Detections.from_arrays(np.zeros((3, 6)), np.zeros(2))
    with pytest.raises(ValueError, match="weights"):
        Detections.from_arrays(np.zeros((1, 6)), np.ones(1), weights=np.zeros(1))
    with pytest.raises(ValueError, match="scores"):
        Detections.from_arrays(np.zeros((1, 6)), -np.ones(1))
    det = Detections.from_arrays(torch.zeros(2, 6), torch.ones(2))
    assert det.boxes.dtype == np.float64 and det.labels.tolist() == [0, 0] and det.weights.tolist() == [1, 1]


def test_top_k_and_threshold():
    scores = np.array([0.2, 0.9, 0.5, 0.9])
    assert top_k(scores, 3).tolist() == [1, 3, 2]
    assert top_k(torch.tensor(scores), -1, score_threshold=0.5).tolist() == [1, 3, 2]
    assert top_k(scores, 10, score_threshold=0.95).tolist() == []
    assert top_k(np.zeros(0), 5).shape == (0,)


def test_select_detections():
    det = Detections.from_arrays(np.array([A, FAR, A_SHIFTED]), np.array([0.3, 0.9, 0.6]))
    out = select_detections(det, score_threshold=0.5, max_detections=5)
    assert out.scores.tolist() == [0.9, 0.6] and out.boxes.tolist() == [FAR, A_SHIFTED]
    assert len(select_detections(det, max_detections=1)) == 1


def test_mirrored_predictions_of_two_models_fuse_to_one_box():
    shape = (32, 32, 32)
    truth = np.array([[4.0, 6.0, 8.0, 12.0, 14.0, 20.0]])
    parts = []
    for score, jitter in ((0.8, 0.0), (0.6, 1.0)):   # model 2 predicts x1 one voxel too far
        box = truth + [0, 0, 0, 0, 0, jitter]
        mirrored = flip_boxes(box, (2,), shape)       # what the model saw on the x-mirrored input
        for b in (box, flip_boxes(mirrored, (2,), shape)):
            det = Detections.from_arrays(np.vstack([b, b + [0, 0, 0, 0, 0, 0.5]]), np.array([score, score / 2]))
            parts.append(det.take(nms(det.boxes, det.scores, 0.5)))   # per-model NMS drops the weaker duplicate
    fused = select_detections(weighted_box_clustering(concat_detections(parts), 0.5, expected=4), 0.1)
    assert len(fused) == 1
    np.testing.assert_allclose(fused.boxes[0], truth[0] + [0, 0, 0, 0, 0, 1.2 / 2.8])   # 2 * 0.6 / (2 * 1.4)
    np.testing.assert_allclose(fused.scores, [0.7])


def test_wbc_zero_volume_box_forms_its_own_cluster():
    # a box clipped to nothing has IoU 0 even with itself; it must still be clustered (and the loop end)
    det = Detections.from_arrays(np.array([[5, 5, 5, 5, 6, 6], A]), np.array([0.9, 0.5]))
    fused = weighted_box_clustering(det, 0.5)
    np.testing.assert_allclose(fused.boxes, [[5, 5, 5, 5, 6, 6], A])
    np.testing.assert_allclose(fused.scores, [0.9, 0.5])


def test_take_accepts_masks_empty_lists_and_torch_indices():
    det = Detections.from_arrays(np.array([A, FAR]), np.array([0.3, 0.9]))
    assert len(det.take([])) == 0 and det.take([]).boxes.shape == (0, 6)
    assert det.take(np.array([False, True])).scores.tolist() == [0.9]
    assert det.take(torch.tensor([1, 0])).scores.tolist() == [0.9, 0.3]


def _wbc_by_definition(boxes, scores, weights, iou_threshold, expected):
    """WBC of one class written out from its definition, one cluster at a time."""
    from volseg.evaluation.detection import box_iou_3d

    order = np.argsort(-scores, kind="stable")
    b, s, w = boxes[order], scores[order], weights[order]
    free = np.ones(len(b), bool)
    out = []
    for i in range(len(b)):
        if not free[i]:
            continue
        members = np.union1d(np.flatnonzero(free & (box_iou_3d(b[i:i + 1], b)[0] >= iou_threshold)), [i])
        free[members] = False
        ms, mw = s[members], w[members]
        cw = ms * mw if (ms * mw).sum() > 0 else mw
        box = (cw[:, None] * b[members]).sum(axis=0) / cw.sum()
        score = (mw * ms).sum() / (mw.sum() + max(0, expected - len(members)) * mw.mean())
        out.append((*box, score, mw.sum()))
    out = np.asarray(out)
    return out[np.argsort(-out[:, 6], kind="stable")]


@pytest.mark.parametrize("expected", [1, 2, 5])
def test_wbc_equals_its_definition_bit_for_bit_with_single_and_grouped_clusters(expected):
    """Single-box clusters are fused all at once; every value must still be the definition's."""
    rng = np.random.default_rng(expected)
    centres = rng.uniform(0, 40, (60, 3))
    lo = np.repeat(centres, 4, axis=0) + rng.normal(0, 1.5, (240, 3))    # groups of near-duplicates
    lo = np.concatenate([lo, rng.uniform(0, 40, (80, 3))])                # and isolated boxes
    boxes = np.concatenate([lo, lo + rng.uniform(2, 9, lo.shape)], axis=1)
    scores, weights = rng.uniform(0.01, 1, len(boxes)), rng.uniform(0.1, 1, len(boxes))
    fused = weighted_box_clustering(Detections.from_arrays(boxes, scores, weights=weights), 0.3, expected=expected)
    ref = _wbc_by_definition(boxes, scores, weights, 0.3, expected)
    assert 0 < (counts := len(fused)) < len(boxes)
    got = np.column_stack([fused.boxes, fused.scores, fused.weights])
    assert got.shape == ref.shape == (counts, 8)
    assert np.array_equal(got, ref)
