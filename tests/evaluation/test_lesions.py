"""Lesion counting on hand-built cases: split, merged, missed and spurious lesions."""

import numpy as np
import pytest

from volseg.evaluation.lesions import LesionConfig, lesion_components, lesion_metrics

ISO = (1.0, 1.0, 1.0)
CFG = LesionConfig(min_volume_mm3=0.0, dilation_mm=0.0)


def _empty(shape=(20, 32, 32)):
    return np.zeros(shape, bool)


def _cube(mask, z, y, x, size):
    mask[z:z + size, y:y + size, x:x + size] = True
    return mask


def test_perfect_match_counts_every_lesion():
    ref = _cube(_cube(_empty(), 2, 2, 2, 4), 10, 20, 20, 5)
    m = lesion_metrics(ref, ref, ISO, CFG)
    assert (m["n_ref"], m["n_pred"], m["tp_ref"], m["tp_pred"], m["fn"], m["fp"]) == (2, 2, 2, 2, 0, 0)
    assert m["sensitivity"] == m["precision"] == m["f1"] == 1.0


def test_split_prediction_detects_the_lesion_and_both_parts_are_true_positives():
    ref = _cube(_empty(), 4, 4, 4, 8)
    pred = _empty()
    pred[4:12, 4:12, 4:7] = True   # one lesion predicted as two separate slabs
    pred[4:12, 4:12, 9:12] = True
    m = lesion_metrics(pred, ref, ISO, CFG)
    assert (m["n_ref"], m["n_pred"], m["tp_ref"], m["tp_pred"]) == (1, 2, 1, 2)
    assert m["f1"] == 1.0


def test_merged_prediction_detects_both_neighbouring_lesions():
    ref = _cube(_cube(_empty(), 4, 4, 4, 6), 4, 4, 12, 6)
    pred = _empty()
    pred[4:10, 4:10, 4:18] = True  # one component bridging both lesions (bridge of 2 voxels in x)
    m = lesion_metrics(pred, ref, ISO, CFG)
    assert (m["n_ref"], m["n_pred"], m["tp_ref"], m["tp_pred"], m["fn"], m["fp"]) == (2, 1, 2, 1, 0, 0)


def test_missed_and_spurious_lesions():
    ref = _cube(_cube(_empty(), 2, 2, 2, 4), 12, 20, 20, 4)   # second lesion is missed
    pred = _cube(_cube(_empty(), 2, 2, 2, 4), 12, 2, 24, 3)   # second prediction is spurious
    m = lesion_metrics(pred, ref, ISO, CFG)
    assert (m["n_ref"], m["n_pred"], m["tp_ref"], m["tp_pred"], m["fn"], m["fp"]) == (2, 2, 1, 1, 1, 1)
    assert m["fp_volume_mm3"] == 27.0
    assert m["sensitivity"] == m["precision"] == m["f1"] == 0.5


def test_overlap_threshold_of_ten_percent():
    ref = _cube(_empty(), 2, 2, 2, 10)  # 1000 voxels
    pred = _empty()
    pred[2:12, 2:12, 2:3] = True        # covers exactly 10%
    assert lesion_metrics(pred, ref, ISO, CFG)["tp_ref"] == 1
    pred[2:3, 2:12, 2:3] = False        # 9%
    m = lesion_metrics(pred, ref, ISO, CFG)
    assert m["tp_ref"] == 0 and m["fn"] == 1
    assert m["tp_pred"] == 0  # symmetric: the reference lesion lies mostly outside the prediction


def test_prediction_mostly_outside_the_lesion_does_not_count():
    ref = _cube(_empty(), 6, 6, 6, 4)    # 64 voxels
    pred = _cube(_empty(), 2, 2, 2, 14)  # covers it, but 2680 of 2744 voxels are healthy tissue
    m = lesion_metrics(pred, ref, ISO, CFG)
    assert (m["tp_ref"], m["tp_pred"], m["fn"], m["fp"]) == (0, 0, 1, 1)


def test_dilation_tolerates_a_one_voxel_larger_prediction():
    ref = _cube(_empty(), 6, 6, 6, 3)    # 27 voxels
    pred = _cube(_empty(), 5, 5, 5, 5)   # 125 voxels: only 22% inside the lesion itself
    assert lesion_metrics(pred, ref, ISO, CFG)["tp_ref"] == 0
    m = lesion_metrics(pred, ref, ISO, LesionConfig(min_volume_mm3=0.0, dilation_mm=1.8))
    assert (m["tp_ref"], m["tp_pred"]) == (1, 1)


def test_min_volume_in_mm3_drops_specks_on_both_sides():
    ref = _cube(_cube(_empty(), 2, 2, 2, 4), 15, 25, 25, 1)
    pred = _cube(_cube(_empty(), 2, 2, 2, 4), 15, 5, 25, 1)
    spacing = (2.0, 1.0, 1.0)  # a single voxel is 2 mm³
    m = lesion_metrics(pred, ref, spacing, LesionConfig(min_volume_mm3=3.0, dilation_mm=0.0))
    assert (m["n_ref"], m["n_pred"], m["fn"], m["fp"]) == (1, 1, 0, 0)
    m = lesion_metrics(pred, ref, spacing, LesionConfig(min_volume_mm3=2.0, dilation_mm=0.0))
    assert (m["n_ref"], m["n_pred"], m["fn"], m["fp"]) == (2, 2, 1, 1)


@pytest.mark.parametrize("connectivity,expected", [(6, 3), (18, 2), (26, 1)])
def test_connectivity(connectivity, expected):
    mask = _empty((4, 4, 4))
    mask[0, 0, 0] = mask[1, 1, 0] = mask[2, 2, 1] = True  # edge-neighbours, then a corner-neighbour
    _, sizes = lesion_components(mask, ISO, LesionConfig(connectivity=connectivity, min_volume_mm3=0.0))
    assert sizes.size - 1 == expected


def test_empty_sides():
    ref = _cube(_empty(), 2, 2, 2, 4)
    nothing = lesion_metrics(_empty(), _empty(), ISO, CFG)
    assert nothing["n_ref"] == nothing["n_pred"] == 0
    assert np.isnan(nothing["sensitivity"]) and np.isnan(nothing["precision"]) and np.isnan(nothing["f1"])
    missed = lesion_metrics(_empty(), ref, ISO, CFG)
    assert missed["sensitivity"] == 0.0 and np.isnan(missed["precision"]) and missed["f1"] == 0.0
    spurious = lesion_metrics(ref, _empty(), ISO, CFG)
    assert np.isnan(spurious["sensitivity"]) and spurious["precision"] == 0.0 and spurious["f1"] == 0.0
    assert spurious["fp"] == 1 and spurious["fp_volume_mm3"] == 64.0


def test_bad_config():
    with pytest.raises(ValueError, match="connectivity"):
        LesionConfig(connectivity=8)
    with pytest.raises(ValueError, match="min_overlap"):
        LesionConfig(min_overlap=0.0)
    with pytest.raises(ValueError, match=">= 0"):
        LesionConfig(min_volume_mm3=-1.0)


@pytest.mark.parametrize("radius", [0.0, 1.0, 2.6])
def test_dilation_counts_match_a_brute_force_distance_transform(radius):
    from scipy.ndimage import distance_transform_edt, gaussian_filter

    from volseg.evaluation.lesions import _inside_counts

    rng = np.random.default_rng(7)
    spacing = (2.5, 0.8, 0.7)
    own = gaussian_filter(rng.random((20, 30, 30)), 1.5) > 0.56
    other_mask = gaussian_filter(rng.random((20, 30, 30)), 1.5) > 0.56
    other, sizes = lesion_components(other_mask, spacing, LesionConfig(min_volume_mm3=0.0))
    near = distance_transform_edt(~own, sampling=spacing) <= radius
    expected = np.bincount(other[near], minlength=sizes.size)[: sizes.size]
    got = _inside_counts(other, sizes.size, own, np.arange(1, sizes.size), spacing, radius)
    assert sizes.size > 5 and np.array_equal(got[1:], expected[1:])
