"""Lesion matching across timepoints on hand-made cases, and the lesion table's world coordinates."""

import csv

import numpy as np
import pytest

from volseg.io.nifti import Geometry
from volseg.postprocessing.longitudinal import MatchingParams, classify_lesions, lesion_rows, write_lesion_table

SPACING = (1.0, 1.0, 1.0)


def _probs(baseline, followup, new=None, vanishing=None):
    """(4, ...) maps from bool masks: 0.9 inside, 0.05 outside."""
    z = np.zeros_like(baseline)
    maps = [baseline, followup, z if new is None else new, z if vanishing is None else vanishing]
    return np.stack([np.where(m, 0.9, 0.05) for m in maps]).astype(np.float16)


def _box(shape, lo, hi):
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


def test_a_lesion_that_grows_stays_stable_and_one_only_at_follow_up_is_new():
    shape = (20, 20, 20)
    base = _box(shape, (2, 2, 2), (5, 5, 5))
    follow = _box(shape, (2, 2, 2), (8, 8, 8)) | _box(shape, (12, 12, 12), (15, 15, 15))
    labels, lesions = classify_lesions(_probs(base, follow), SPACING)
    assert [r["type"] for r in lesions] == ["stable", "new"]
    stable, new = lesions
    assert stable["volume_baseline_mm3"] == 27 and stable["volume_followup_mm3"] == 216
    assert new["volume_baseline_mm3"] == 0 and new["volume_followup_mm3"] == 27
    assert (labels == 1).sum() == 216 and (labels == 2).sum() == 27 and not (labels == 3).any()
    assert 0.85 < new["confidence"] <= 0.9  # p_followup · (1 − p_baseline) = 0.9 · 0.95
    np.testing.assert_allclose(new["centre_voxel"], [13, 13, 13])


def test_a_lesion_that_disappears_is_vanishing():
    shape = (16, 16, 16)
    base = _box(shape, (2, 2, 2), (5, 5, 5)) | _box(shape, (9, 9, 9), (12, 12, 12))
    follow = _box(shape, (2, 2, 2), (5, 5, 5))
    labels, lesions = classify_lesions(_probs(base, follow), SPACING)
    assert sorted(r["type"] for r in lesions) == ["stable", "vanishing"]
    assert (labels == 3).sum() == 27


def test_a_lesion_that_splits_is_one_stable_lesion_and_two_that_merge_too():
    shape = (16, 16, 24)
    base = _box(shape, (4, 4, 2), (8, 8, 20))  # one long lesion ...
    follow = _box(shape, (4, 4, 2), (8, 8, 9)) | _box(shape, (4, 4, 13), (8, 8, 20))  # ... split in two
    _, lesions = classify_lesions(_probs(base, follow), SPACING)
    assert [r["type"] for r in lesions] == ["stable"]
    _, merged = classify_lesions(_probs(follow, base), SPACING)  # two at baseline merging into one
    assert [r["type"] for r in merged] == ["stable"]


def test_a_lesion_at_the_volume_border_is_found():
    shape = (10, 10, 10)
    follow = _box(shape, (0, 0, 0), (3, 3, 3))
    labels, lesions = classify_lesions(_probs(np.zeros(shape, bool), follow), SPACING)
    assert [r["type"] for r in lesions] == ["new"] and labels[0, 0, 0] == 2


def test_small_overlap_does_not_match_and_min_volume_drops_specks():
    shape = (20, 20, 20)
    base = _box(shape, (2, 2, 2), (8, 8, 8))  # 216 voxels
    follow = _box(shape, (7, 7, 7), (13, 13, 13))  # overlaps base in 1 voxel: 1/216 < 0.1
    _, lesions = classify_lesions(_probs(base, follow), SPACING)
    assert sorted(r["type"] for r in lesions) == ["new", "vanishing"]
    speck = _box(shape, (15, 15, 15), (16, 16, 17))  # 2 voxels = 2 mm³
    _, lesions = classify_lesions(_probs(base, base | speck), SPACING, MatchingParams(min_volume_mm3=3.0))
    assert [r["type"] for r in lesions] == ["stable"]


def test_matching_params_are_validated():
    with pytest.raises(ValueError, match="threshold"):
        MatchingParams(threshold=1.5)
    with pytest.raises(ValueError, match="connectivity"):
        MatchingParams(connectivity=4)
    assert MatchingParams.from_dict({"threshold": 0.4, "grid": {}}).threshold == 0.4


def test_lesion_table_centres_are_world_millimetres_on_a_rotated_volume(tmp_path):
    import SimpleITK as sitk

    shape = (10, 12, 14)
    c, s = np.cos(np.deg2rad(30)), np.sin(np.deg2rad(30))
    direction = (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)
    geometry = Geometry(shape, (3.0, 2.0, 1.5), (10.0, -20.0, 5.0), direction)
    follow = _box(shape, (4, 5, 6), (7, 8, 9))  # centre voxel (z, y, x) = (5, 6, 7)
    _, lesions = classify_lesions(_probs(np.zeros(shape, bool), follow), geometry.spacing)
    img = sitk.Image(shape[2], shape[1], shape[0], sitk.sitkUInt8)
    img.SetSpacing(geometry.spacing[::-1])
    img.SetOrigin(geometry.origin)
    img.SetDirection(direction)
    expected = img.TransformContinuousIndexToPhysicalPoint((7.0, 6.0, 5.0))
    row = lesion_rows(lesions, geometry)[0]
    np.testing.assert_allclose([row["centre_x_mm"], row["centre_y_mm"], row["centre_z_mm"]], expected, atol=1e-3)
    assert row["volume_followup_mm3"] == pytest.approx(27 * 9.0)
    path = tmp_path / "case_lesions.csv"
    write_lesion_table(path, lesions, geometry)
    rows = list(csv.DictReader(open(path)))
    assert rows[0]["type"] == "new" and float(rows[0]["centre_x_mm"]) == pytest.approx(expected[0], abs=1e-3)


def test_change_heads_keep_a_vanished_lesion_that_the_follow_up_map_half_sees():
    shape = (12, 12, 12)
    lesion = _box(shape, (3, 3, 3), (7, 7, 7))
    probs = _probs(lesion, np.zeros(shape, bool), vanishing=lesion)
    probs[1][3:5, 3:7, 3:7] = 0.6  # misregistration: the follow-up map still sees half of it
    _, plain = classify_lesions(probs, SPACING, MatchingParams(change_heads=False))
    assert [r["type"] for r in plain] == ["stable"]
    _, heads = classify_lesions(probs, SPACING, MatchingParams(change_heads=True))
    assert [r["type"] for r in heads] == ["vanishing"]
