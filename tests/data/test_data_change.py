"""Change augmentation: timepoint swap relabels, misregistration moves only the follow-up, lesion paste."""

import numpy as np
import pytest

from volseg.data.change import LesionPaste, Misregistration, TimepointSwap


def _batch(b=2, shape=(12, 12, 12)):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(b, 2, *shape)).astype(np.float32)
    seg = np.zeros((b, 1, *shape), np.int16)
    seg[:, 0, 2:4, 2:4, 2:4] = 1
    seg[:, 0, 6:8, 6:8, 6:8] = 2
    seg[:, 0, 9:11, 2:4, 8:10] = 3
    return data, seg


def test_timepoint_swap_exchanges_channels_and_relabels_new_and_vanishing():
    data, seg = _batch()
    d0, s0 = data.copy(), seg.copy()
    out = TimepointSwap([0], [1], p=1.0)(data=data, seg=seg)
    np.testing.assert_array_equal(out["data"][:, 0], d0[:, 1])
    np.testing.assert_array_equal(out["data"][:, 1], d0[:, 0])
    np.testing.assert_array_equal(out["seg"] == 1, s0 == 1)  # stable stays stable
    np.testing.assert_array_equal(out["seg"] == 2, s0 == 3)
    np.testing.assert_array_equal(out["seg"] == 3, s0 == 2)
    np.testing.assert_array_equal(out["seg"] == 0, s0 == 0)


def test_timepoint_swap_with_p_zero_changes_nothing_and_needs_paired_channels():
    data, seg = _batch()
    d0, s0 = data.copy(), seg.copy()
    TimepointSwap([0], [1], p=0.0)(data=data, seg=seg)
    np.testing.assert_array_equal(data, d0)
    np.testing.assert_array_equal(seg, s0)
    with pytest.raises(ValueError, match="as many baseline"):
        TimepointSwap([0, 1], [2])


def test_misregistration_moves_the_follow_up_only():
    data, seg = _batch()
    d0, s0 = data.copy(), seg.copy()
    np.random.seed(3)
    Misregistration([1], max_shift_voxels=1.0, max_rotation_deg=2.0, p=1.0)(data=data, seg=seg)
    np.testing.assert_array_equal(data[:, 0], d0[:, 0])
    np.testing.assert_array_equal(seg, s0)
    assert not np.allclose(data[:, 1], d0[:, 1])


def test_lesion_paste_adds_a_new_or_vanishing_lesion_in_one_timepoint_only():
    shape = (16, 16, 16)
    data = np.full((2, 2, *shape), 100.0, np.float32)
    seg = np.zeros((2, 1, *shape), np.int16)
    data[0, :, 4:7, 4:7, 4:7] = 180.0  # donor: a stable lesion, bright at both timepoints
    seg[0, 0, 4:7, 4:7, 4:7] = 1
    d_before = data[1].copy()
    np.random.seed(0)
    LesionPaste([0], [1], p=1.0, p_new=1.0, min_voxels=4)(data=data, seg=seg)
    pasted = seg[1, 0] == 2
    assert pasted.sum() == 27 and not (seg[1, 0] == 3).any()
    np.testing.assert_array_equal(data[1, 0], d_before[0])  # baseline untouched: a new lesion
    assert data[1, 1][pasted].mean() > 150  # the donor's contrast (+80) on the recipient's tissue (100)
    np.random.seed(0)
    data2, seg2 = data.copy(), np.zeros_like(seg)
    seg2[0] = seg[0]
    LesionPaste([0], [1], p=1.0, p_new=0.0)(data=data2, seg=seg2)
    assert (seg2[1, 0] == 3).sum() == 27
