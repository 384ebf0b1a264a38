"""Box helpers: (z0, y0, x0, z1, y1, x1) half-open voxel boxes, numpy and torch."""

import numpy as np
import pytest
import torch

from volseg.detection.boxes import (box_iou, box_volume, boxes_from_instances, clip_boxes, flip_boxes, scale_boxes,
                                    shift_boxes)
from volseg.fingerprint.case import object_sizes


def hand_map():
    m = np.zeros((6, 7, 8), dtype=np.int16)
    m[1:4, 2, 0:5] = 3           # a slab
    m[5, 6, 7] = 1               # one voxel in the far corner
    m[0, 0, 0] = 2               # two voxels far apart, one instance
    m[2, 4, 1] = 2
    return m


def test_boxes_from_a_hand_drawn_map():
    m = hand_map()
    assert boxes_from_instances(m).tolist() == [[5, 6, 7, 6, 7, 8], [0, 0, 0, 3, 5, 2], [1, 2, 0, 4, 3, 5]]
    assert boxes_from_instances(m, ids=[3, 1]).tolist() == [[1, 2, 0, 4, 3, 5], [5, 6, 7, 6, 7, 8]]
    assert boxes_from_instances(m).dtype == np.int64


def test_box_extents_match_the_fingerprint_extents():
    m = hand_map()
    spacing = (2.0, 0.5, 1.0)
    objects = object_sizes(m, spacing, {1: 0, 2: 0, 3: 0})
    boxes = boxes_from_instances(m)
    np.testing.assert_allclose((boxes[:, 3:] - boxes[:, :3]) * spacing, [o["extent_mm"] for o in objects])


def test_boxes_from_an_empty_map_and_bad_maps():
    assert boxes_from_instances(np.zeros((2, 3, 4), np.int32)).shape == (0, 6)
    with pytest.raises(ValueError, match=r"instances \[9\] do not occur"):
        boxes_from_instances(hand_map(), ids=[3, 9])
    with pytest.raises(ValueError, match="positive"):
        boxes_from_instances(hand_map(), ids=[0])
    with pytest.raises(ValueError, match="3D integer"):
        boxes_from_instances(hand_map().astype(float))
    with pytest.raises(ValueError, match=">= 0"):
        boxes_from_instances(-hand_map())


def test_flip_by_hand():
    boxes = np.array([[1, 2, 3, 4, 5, 6]])
    assert flip_boxes(boxes, [2], (10, 10, 10)).tolist() == [[1, 2, 4, 4, 5, 7]]
    assert flip_boxes(boxes, [0, 1], (8, 9, 10)).tolist() == [[4, 4, 3, 7, 7, 6]]


@pytest.mark.parametrize("axes", [(0,), (1,), (2,), (0, 2), (0, 1, 2)])
def test_flipping_the_map_flips_its_boxes(axes):
    m = hand_map()
    expected = boxes_from_instances(np.flip(m, axes).copy())
    np.testing.assert_array_equal(flip_boxes(boxes_from_instances(m), axes, m.shape), expected)


def test_flip_round_trip_numpy_and_torch():
    rng = np.random.default_rng(0)
    lo = rng.uniform(0, 10, (5, 3))
    boxes = np.hstack([lo, lo + rng.uniform(0.5, 5, (5, 3))])
    shape = (16, 20, 24)
    np.testing.assert_allclose(flip_boxes(flip_boxes(boxes, (0, 2), shape), (0, 2), shape), boxes)
    t = torch.as_tensor(boxes)
    out = flip_boxes(flip_boxes(t, (1,), shape), (1,), shape)
    assert isinstance(out, torch.Tensor)
    torch.testing.assert_close(out, t)
    assert not np.allclose(flip_boxes(boxes, (1,), shape), boxes)


def test_flip_rejects_bad_axes():
    with pytest.raises(ValueError, match="axes"):
        flip_boxes(np.zeros((1, 6)), [3], (4, 4, 4))
    with pytest.raises(ValueError, match="axes"):
        flip_boxes(np.zeros((1, 6)), [1, 1], (4, 4, 4))


def test_shift_moves_both_corners():
    boxes = np.array([[1, 2, 3, 4, 5, 6]])
    shifted = shift_boxes(boxes, (10, 20, 30))
    assert shifted.tolist() == [[11, 22, 33, 14, 25, 36]] and shifted.dtype.kind == "i"
    assert shift_boxes(torch.tensor(boxes, dtype=torch.float32), (0.5, 0, 0)).tolist() == [[1.5, 2, 3, 4.5, 5, 6]]


def test_scale_by_hand_and_round_trip():
    boxes = np.array([[1, 2, 3, 4, 6, 9]])
    scaled = scale_boxes(boxes, (2.0, 0.5, 1.0 / 3.0))
    np.testing.assert_allclose(scaled, [[2, 1, 1, 8, 3, 3]])
    np.testing.assert_allclose(scale_boxes(scaled, (0.5, 2.0, 3.0)), boxes)
    t = scale_boxes(torch.tensor(boxes), (2.0, 2.0, 2.0))
    assert t.dtype == torch.float64 and t.tolist() == [[2, 4, 6, 8, 12, 18]]


def test_scaling_a_map_by_repetition_scales_its_boxes():
    m = hand_map()
    big = m.repeat(2, axis=0).repeat(3, axis=2)   # exact nearest-neighbour upsampling (2, 1, 3)
    np.testing.assert_allclose(scale_boxes(boxes_from_instances(m), (2, 1, 3)), boxes_from_instances(big))


def test_scale_rejects_non_positive_factors():
    with pytest.raises(ValueError, match="factor_zyx"):
        scale_boxes(np.zeros((1, 6)), (1.0, 0.0, 1.0))


def test_clip_and_volume():
    boxes = np.array([[-2.0, 1, 1, 3, 4, 12], [20, 20, 20, 25, 25, 25], [1, 1, 1, 2, 3, 4]])
    clipped = clip_boxes(boxes, (10, 10, 10))
    np.testing.assert_allclose(clipped, [[0, 1, 1, 3, 4, 10], [10, 10, 10, 10, 10, 10], [1, 1, 1, 2, 3, 4]])
    np.testing.assert_allclose(box_volume(clipped), [3 * 3 * 9, 0, 1 * 2 * 3])
    torch.testing.assert_close(clip_boxes(torch.as_tensor(boxes), (10, 10, 10)), torch.as_tensor(clipped))
    torch.testing.assert_close(box_volume(torch.tensor([[0.0, 0, 0, 2, 3, 4], [2, 2, 2, 1, 3, 3]])),
                               torch.tensor([24.0, 0.0]))


def test_iou_by_hand_and_axis_order_invariance():
    a = np.array([[0, 0, 0, 2, 2, 2]])
    b = np.array([[1, 0, 0, 3, 2, 2], [0, 0, 0, 2, 2, 2], [5, 5, 5, 6, 6, 6]])
    np.testing.assert_allclose(box_iou(a, b), [[4 / 12, 1.0, 0.0]])
    rng = np.random.default_rng(2)
    lo = rng.uniform(0, 5, (6, 3))
    boxes = np.hstack([lo, lo + rng.uniform(1, 5, (6, 3))])
    xyz = boxes[:, [2, 1, 0, 5, 4, 3]]   # MONAI's (x1, y1, z1, x2, y2, z2) order
    np.testing.assert_allclose(box_iou(boxes, boxes[::-1]), box_iou(xyz, xyz[::-1]), rtol=1e-6)   # MONAI: float32


def test_iou_matches_voxel_counting():
    rng = np.random.default_rng(3)
    lo = rng.integers(0, 6, (5, 3))
    boxes = np.hstack([lo, lo + rng.integers(1, 6, (5, 3))])
    masks = np.zeros((5, 12, 12, 12), bool)
    for i, (z0, y0, x0, z1, y1, x1) in enumerate(boxes):
        masks[i, z0:z1, y0:y1, x0:x1] = True
    inter = np.einsum("izyx,jzyx->ij", masks.astype(int), masks.astype(int))
    sizes = masks.reshape(5, -1).sum(axis=1)
    np.testing.assert_allclose(box_iou(boxes, torch.as_tensor(boxes)), inter / (sizes[:, None] + sizes - inter))


def test_empty_and_badly_shaped_boxes():
    assert box_iou(np.zeros((0, 6)), np.zeros((3, 6))).shape == (0, 3)
    assert flip_boxes(np.zeros((0, 6)), (0,), (4, 4, 4)).shape == (0, 6)
    assert box_volume(np.zeros((0, 6))).shape == (0,)
    with pytest.raises(ValueError, match=r"\(N, 6\)"):
        box_volume(np.zeros((3, 4)))
