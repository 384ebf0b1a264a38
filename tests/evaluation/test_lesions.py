"""Lesion counting on hand-built cases: split, merged, missed and spurious lesions.

The first tests hold for both matching rules; then come the specifics of the "dilated" rule
and of the default "anima" (MSSEG-2) rule, each with its numbers worked out by hand.
"""

import numpy as np
import pytest

from volseg.evaluation.lesions import LesionConfig, lesion_components, lesion_metrics

ISO = (1.0, 1.0, 1.0)
CFG = LesionConfig(rule="dilated", min_volume_mm3=0.0, dilation_mm=0.0)  # the "dilated" rule, no dilation
ANIMA = LesionConfig(min_volume_mm3=0.0)  # the default rule
BOTH = pytest.mark.parametrize("cfg", [ANIMA, CFG], ids=["anima", "dilated"])


def _empty(shape=(20, 32, 32)):
    return np.zeros(shape, bool)


def _cube(mask, z, y, x, size):
    mask[z:z + size, y:y + size, x:x + size] = True
    return mask


@BOTH
def test_perfect_match_counts_every_lesion(cfg):
    ref = _cube(_cube(_empty(), 2, 2, 2, 4), 10, 20, 20, 5)
    m = lesion_metrics(ref, ref, ISO, cfg)
    assert (m["n_ref"], m["n_pred"], m["tp_ref"], m["tp_pred"], m["fn"], m["fp"]) == (2, 2, 2, 2, 0, 0)
    assert m["sensitivity"] == m["precision"] == m["f1"] == 1.0


@BOTH
def test_split_prediction_detects_the_lesion_and_both_parts_are_true_positives(cfg):
    ref = _cube(_empty(), 4, 4, 4, 8)
    pred = _empty()
    pred[4:12, 4:12, 4:7] = True   # one lesion predicted as two separate slabs
    pred[4:12, 4:12, 9:12] = True
    m = lesion_metrics(pred, ref, ISO, cfg)
    assert (m["n_ref"], m["n_pred"], m["tp_ref"], m["tp_pred"]) == (1, 2, 1, 2)
    assert m["f1"] == 1.0


@BOTH
def test_merged_prediction_detects_both_neighbouring_lesions(cfg):
    ref = _cube(_cube(_empty(), 4, 4, 4, 6), 4, 4, 12, 6)
    pred = _empty()
    pred[4:10, 4:10, 4:18] = True  # one component bridging both lesions (bridge of 2 voxels in x)
    m = lesion_metrics(pred, ref, ISO, cfg)
    assert (m["n_ref"], m["n_pred"], m["tp_ref"], m["tp_pred"], m["fn"], m["fp"]) == (2, 1, 2, 1, 0, 0)


@BOTH
def test_missed_and_spurious_lesions(cfg):
    ref = _cube(_cube(_empty(), 2, 2, 2, 4), 12, 20, 20, 4)   # second lesion is missed
    pred = _cube(_cube(_empty(), 2, 2, 2, 4), 12, 2, 24, 3)   # second prediction is spurious
    m = lesion_metrics(pred, ref, ISO, cfg)
    assert (m["n_ref"], m["n_pred"], m["tp_ref"], m["tp_pred"], m["fn"], m["fp"]) == (2, 2, 1, 1, 1, 1)
    assert m["fp_volume_mm3"] == 27.0
    assert m["sensitivity"] == m["precision"] == m["f1"] == 0.5


def test_dilated_overlap_threshold_of_ten_percent():
    ref = _cube(_empty(), 2, 2, 2, 10)  # 1000 voxels
    pred = _empty()
    pred[2:12, 2:12, 2:3] = True        # covers exactly 10%
    assert lesion_metrics(pred, ref, ISO, CFG)["tp_ref"] == 1
    pred[2:3, 2:12, 2:3] = False        # 9%
    m = lesion_metrics(pred, ref, ISO, CFG)
    assert m["tp_ref"] == 0 and m["fn"] == 1
    assert m["tp_pred"] == 0  # symmetric: the reference lesion lies mostly outside the prediction


def test_dilated_prediction_mostly_outside_the_lesion_does_not_count():
    ref = _cube(_empty(), 6, 6, 6, 4)    # 64 voxels
    pred = _cube(_empty(), 2, 2, 2, 14)  # covers it, but 2680 of 2744 voxels are healthy tissue
    m = lesion_metrics(pred, ref, ISO, CFG)
    assert (m["tp_ref"], m["tp_pred"], m["fn"], m["fp"]) == (0, 0, 1, 1)


def test_dilation_tolerates_a_one_voxel_larger_prediction():
    ref = _cube(_empty(), 6, 6, 6, 3)    # 27 voxels
    pred = _cube(_empty(), 5, 5, 5, 5)   # 125 voxels: only 22% inside the lesion itself
    assert lesion_metrics(pred, ref, ISO, CFG)["tp_ref"] == 0
    m = lesion_metrics(pred, ref, ISO, LesionConfig(rule="dilated", min_volume_mm3=0.0, dilation_mm=1.8))
    assert (m["tp_ref"], m["tp_pred"]) == (1, 1)


def test_dilated_min_volume_in_mm3_drops_specks_on_both_sides():
    ref = _cube(_cube(_empty(), 2, 2, 2, 4), 15, 25, 25, 1)
    pred = _cube(_cube(_empty(), 2, 2, 2, 4), 15, 5, 25, 1)
    spacing = (2.0, 1.0, 1.0)  # a single voxel is 2 mm³
    m = lesion_metrics(pred, ref, spacing, LesionConfig(rule="dilated", min_volume_mm3=3.0, dilation_mm=0.0))
    assert (m["n_ref"], m["n_pred"], m["fn"], m["fp"]) == (1, 1, 0, 0)
    m = lesion_metrics(pred, ref, spacing, LesionConfig(rule="dilated", min_volume_mm3=2.0, dilation_mm=0.0))
    assert (m["n_ref"], m["n_pred"], m["fn"], m["fp"]) == (2, 2, 1, 1)


@pytest.mark.parametrize("connectivity,expected", [(6, 3), (18, 2), (26, 1)])
def test_connectivity(connectivity, expected):
    mask = _empty((4, 4, 4))
    mask[0, 0, 0] = mask[1, 1, 0] = mask[2, 2, 1] = True  # edge-neighbours, then a corner-neighbour
    _, sizes = lesion_components(mask, ISO, LesionConfig(connectivity=connectivity, min_volume_mm3=0.0))
    assert sizes.size - 1 == expected


@BOTH
def test_empty_sides(cfg):
    ref = _cube(_empty(), 2, 2, 2, 4)
    nothing = lesion_metrics(_empty(), _empty(), ISO, cfg)
    assert nothing["n_ref"] == nothing["n_pred"] == 0
    assert np.isnan(nothing["sensitivity"]) and np.isnan(nothing["precision"]) and np.isnan(nothing["f1"])
    missed = lesion_metrics(_empty(), ref, ISO, cfg)
    assert missed["sensitivity"] == 0.0 and np.isnan(missed["precision"]) and missed["f1"] == 0.0
    spurious = lesion_metrics(ref, _empty(), ISO, cfg)
    assert np.isnan(spurious["sensitivity"]) and spurious["precision"] == 0.0 and spurious["f1"] == 0.0
    assert spurious["fp"] == 1 and spurious["fp_volume_mm3"] == 64.0


def test_bad_config():
    with pytest.raises(ValueError, match="connectivity"):
        LesionConfig(connectivity=8)
    with pytest.raises(ValueError, match="min_overlap"):
        LesionConfig(min_overlap=0.0)
    with pytest.raises(ValueError, match=">= 0"):
        LesionConfig(min_volume_mm3=-1.0)
    with pytest.raises(ValueError, match="rule"):
        LesionConfig(rule="msseg")
    with pytest.raises(ValueError, match="alpha"):
        LesionConfig(alpha=1.0)
    with pytest.raises(ValueError, match="beta"):
        LesionConfig(beta=1.5)
    with pytest.raises(ValueError, match="gamma"):
        LesionConfig(gamma=-0.1)
    with pytest.raises(ValueError, match="gamma"):
        LesionConfig(gamma=float("nan"))


@pytest.mark.parametrize("radius", [0.0, 1.0, 2.6])
def test_dilation_counts_match_a_brute_force_distance_transform(radius):
    from scipy.ndimage import distance_transform_edt, gaussian_filter

    from volseg.evaluation.lesions import _inside_counts

    rng = np.random.default_rng(7)
    spacing = (2.5, 0.8, 0.7)
    own = gaussian_filter(rng.random((20, 30, 30)), 1.5) > 0.56
    other_mask = gaussian_filter(rng.random((20, 30, 30)), 1.5) > 0.56
    other, sizes = lesion_components(other_mask, spacing, LesionConfig(rule="dilated", min_volume_mm3=0.0))
    near = distance_transform_edt(~own, sampling=spacing) <= radius
    expected = np.bincount(other[near], minlength=sizes.size)[: sizes.size]
    got = _inside_counts(other, sizes.size, own, np.arange(1, sizes.size), spacing, radius)
    assert sizes.size > 5 and np.array_equal(got[1:], expected[1:])


# ---- the "anima" rule (MSSEG-2, the default) -------------------------------------------------


def test_anima_is_the_default_with_msseg2_parameters():
    cfg = LesionConfig()
    assert (cfg.rule, cfg.connectivity, cfg.min_volume_mm3, cfg.alpha, cfg.beta, cfg.gamma) == \
        ("anima", 6, 3.0, 0.10, 0.70, 0.65)
    assert cfg.to_dict()["connectivity"] == 6  # resolved, not None
    assert LesionConfig(rule="dilated").connectivity == 26
    assert LesionConfig(rule="dilated", connectivity=6).connectivity == 6


def test_anima_alpha_is_a_strict_ten_percent():
    ref = _cube(_empty(), 2, 2, 2, 10)  # R: 1000 voxels
    pred = _empty()
    pred[2:12, 2:12, 2] = True          # P: 100 voxels, all inside R
    # R: covered 100 / 1000 = 0.10, not > 0.10 -> missed.
    # P: covered by R 100 / 100 = 1.0 > 0.1; R's outside ratio w.r.t. P = 900 / 1000 = 0.9 > 0.7 -> false positive.
    m = lesion_metrics(pred, ref, ISO)
    assert (m["tp_ref"], m["tp_pred"], m["fn"], m["fp"]) == (0, 0, 1, 1)
    pred[2, 2:12, 3] = True             # P: 110 voxels (a face-connected row of 10 added), all inside R
    # R: covered 110 / 1000 = 0.11 > 0.10; P is the only overlapper, outside ratio 0 / 110 = 0 -> detected.
    # P: R's outside ratio w.r.t. P = 890 / 1000 = 0.89 > 0.7 -> still a false positive.
    m = lesion_metrics(pred, ref, ISO)
    assert (m["n_pred"], m["tp_ref"], m["tp_pred"]) == (1, 1, 0)
    assert (m["sensitivity"], m["precision"], m["f1"]) == (1.0, 0.0, 0.0)
    assert m["fp_volume_mm3"] == 110.0


def test_anima_beta_rejects_a_prediction_mostly_outside():
    ref = _cube(_empty(), 4, 4, 4, 4)   # R: 64 voxels, x 4..7
    pred = _empty()
    pred[4:8, 4:8, 4:24] = True         # P: 4 * 4 * 20 = 320 voxels covering R
    # R: covered 64 / 64 = 1 > 0.1; P's outside ratio = (320 - 64) / 320 = 0.8 > 0.7 -> missed.
    # P: covered 64 / 320 = 0.2 > 0.1; R's outside ratio w.r.t. P = 0 -> true positive.
    m = lesion_metrics(pred, ref, ISO)
    assert (m["tp_ref"], m["tp_pred"], m["sensitivity"], m["precision"], m["f1"]) == (0, 1, 0.0, 1.0, 0.0)
    pred[:, :, 14:] = False             # P: 4 * 4 * 10 = 160 voxels
    # R: P's outside ratio = (160 - 64) / 160 = 0.6 <= 0.7 -> detected; P: as before -> true positive.
    m = lesion_metrics(pred, ref, ISO)
    assert (m["tp_ref"], m["tp_pred"], m["f1"]) == (1, 1, 1.0)


def test_anima_gamma_ignores_a_small_stray_overlapper():
    ref = _cube(_empty(), 2, 2, 2, 10)  # R: z, y, x in 2..11, 1000 voxels
    pred = _empty()
    pred[2:12, 2:12, 2:9] = True        # A: x 2..8, 700 voxels, all inside R
    pred[2:12, 5, 11:21] = True         # B: x 11..20 at y = 5, 100 voxels, 10 inside R (x = 11), 90 outside
    # R: covered 710 / 1000 > 0.1. By overlap: A (700), B (10). A: share before it 0 < 0.65, outside
    # ratio 0 -> fine; B: share before it 700 / 710 = 0.986 >= 0.65 -> not examined (its 0.9 does
    # not count) -> detected.
    # A: covered 700 / 700; R's outside ratio w.r.t. the prediction (1000 - 710) / 1000 = 0.29 -> true positive.
    # B: covered 10 / 100 = 0.10, not > 0.10 -> false positive.
    m = lesion_metrics(pred, ref, ISO)
    assert (m["n_ref"], m["n_pred"], m["tp_ref"], m["tp_pred"], m["fp_volume_mm3"]) == (1, 2, 1, 1, 100.0)


@pytest.mark.parametrize("a_stop,b_start,detected", [
    (3, 8, False),   # A: x 2 (100 inside); B: x 8..23, 400 inside, 1200 outside (0.75)
    (7, 8, False),   # A: x 2..6 (500 inside); B as above
    (8, 9, True),    # A: x 2..7 (600 inside); B: x 9..24, 300 inside, 1300 outside (0.8125)
])
def test_anima_gamma_examines_the_largest_overlappers(a_stop, b_start, detected):
    ref = _cube(_empty(), 2, 2, 2, 10)  # R: z, y, x in 2..11, 1000 voxels
    pred = _empty()
    pred[2:12, 2:12, 2:a_stop] = True   # A, all inside R, outside ratio 0
    pred[2:12, 2:12, b_start:b_start + 16] = True  # B, 1600 voxels, mostly outside R (> 0.7)
    # 1. A 100, B 400: B has the largest overlap, is examined first, 0.75 > 0.7 -> R missed.
    # 2. A 500, B 400: A first; share before B = 500 / 900 = 0.556 < 0.65 -> B examined -> R missed.
    # 3. A 600, B 300: A first; share before B = 600 / 900 = 0.667 >= 0.65 -> B not examined -> R detected.
    # Prediction side, all three: A and B are covered by R (>= 25%) and R's outside ratio w.r.t. the
    # prediction is at most (1000 - 500) / 1000 = 0.5 -> both are true positives.
    m = lesion_metrics(pred, ref, ISO)
    assert (m["n_pred"], m["tp_ref"], m["tp_pred"]) == (2, int(detected), 2)


def test_anima_merged_prediction_detects_both_lesions():
    ref = _cube(_cube(_empty(), 4, 4, 4, 6), 4, 4, 12, 6)  # R1, R2: 216 voxels each, x 4..9 and 12..17
    pred = _empty()
    pred[4:10, 4:10, 4:18] = True       # P: 504 voxels, 72 of them (x 10, 11) outside both
    # R1, R2: covered 216 / 216; P's outside ratio 72 / 504 = 0.14 <= 0.7 -> both detected.
    # P: covered 432 / 504 = 0.86; R1 (share before 0) and R2 (share before 216 / 432 = 0.5 < 0.65)
    # are examined, both have outside ratio 0 -> true positive.
    m = lesion_metrics(pred, ref, ISO)
    assert (m["n_ref"], m["n_pred"], m["tp_ref"], m["tp_pred"], m["f1"]) == (2, 1, 2, 1, 1.0)


def test_anima_min_volume_keeps_lesions_strictly_above_three_mm3():
    mask = _empty()
    mask[2, 2, 2:5] = True              # 3 voxels = 3 mm³: fewer than floor(3 / 1) + 1 = 4 -> removed
    mask[10, 10, 2:6] = True            # 4 voxels = 4 mm³ -> kept
    _, sizes = lesion_components(mask, ISO, LesionConfig())
    assert sizes.tolist() == [0, 4]
    _, sizes = lesion_components(mask, ISO, LesionConfig(rule="dilated"))
    assert sizes.tolist() == [0, 3, 4]  # "dilated" keeps 3 mm³ (>= 3)
    _, sizes = lesion_components(mask, (1.0, 1.0, 0.5), LesionConfig())
    assert sizes.size == 1              # 0.5 mm³ voxels: at least floor(6) + 1 = 7 voxels


def test_anima_removed_components_are_background():
    ref = _empty()
    ref[2, 2, 2:5] = True               # reference speck of 3 voxels: removed
    pred = _empty()
    pred[2, 2, 2:6] = True              # 4 voxels over it: kept, but nothing to match
    m = lesion_metrics(pred, ref, ISO)
    assert (m["n_ref"], m["n_pred"], m["fp"], m["count_error"]) == (0, 1, 1, 1)
    assert np.isnan(m["sensitivity"]) and m["precision"] == 0.0 and m["f1"] == 0.0


def test_anima_counts_diagonal_blobs_as_two_lesions():
    mask = _cube(_cube(_empty(), 2, 2, 2, 3), 5, 5, 5, 3)  # two 27-voxel cubes sharing one corner only
    assert lesion_components(mask, ISO, LesionConfig())[1].tolist() == [0, 27, 27]        # 6-connectivity
    assert lesion_components(mask, ISO, LesionConfig(rule="dilated"))[1].tolist() == [0, 54]  # 26
    m = lesion_metrics(mask, mask, ISO)
    assert (m["n_ref"], m["n_pred"], m["tp_ref"], m["tp_pred"]) == (2, 2, 2, 2)


def test_anima_is_more_lenient_than_dilated_for_a_too_wide_prediction():
    ref = _cube(_empty(), 6, 6, 6, 4)   # R: 64 voxels, x 6..9
    pred = _empty()
    pred[6:10, 6:10, 6:18] = True       # P: 4 * 4 * 12 = 192 voxels covering R, x 6..17
    # anima: P's outside ratio (192 - 64) / 192 = 0.667 <= 0.7 -> R detected; P covered 64 / 192 = 0.33,
    # R's outside ratio 0 -> true positive: F1 = 1.
    # dilated: P has 64 + 16 (x = 10, within 1 mm of R) = 80 of 192 voxels (0.42 < 0.5) in the dilated
    # reference -> R missed; P covered 0.33 >= 0.1 and R lies inside P -> true positive: S 0, P 1, F1 0.
    anima = lesion_metrics(pred, ref, ISO, LesionConfig())
    dilated = lesion_metrics(pred, ref, ISO, LesionConfig(rule="dilated"))
    assert (anima["tp_ref"], anima["tp_pred"], anima["f1"]) == (1, 1, 1.0)
    assert (dilated["tp_ref"], dilated["tp_pred"], dilated["f1"]) == (0, 1, 0.0)
    assert dilated["f1"] < anima["f1"]


def _anima_by_the_book(own, own_sizes, other, other_sizes, cfg):
    """The anima rule written lesion by lesion (slow, for comparison)."""
    out = []
    for i in range(1, own_sizes.size):
        under = other[own == i]
        ids, counts = np.unique(under[under > 0], return_counts=True)
        covered = counts.sum()
        if not covered / own_sizes[i] > cfg.alpha:
            out.append(False)
            continue
        ok, share = True, 0.0
        for j, c in sorted(zip(ids.tolist(), counts.tolist()), key=lambda t: (-t[1], t[0])):
            if share >= cfg.gamma:
                break
            if np.count_nonzero((other == j) & (own == 0)) / other_sizes[j] > cfg.beta:
                ok = False
                break
            share += c / covered
        out.append(ok)
    return np.array(out, bool)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_anima_matches_a_lesion_by_lesion_implementation(seed):
    from scipy.ndimage import gaussian_filter

    from volseg.evaluation.lesions import _detected_anima

    rng = np.random.default_rng(seed)
    cfg = LesionConfig()
    spacing = (1.5, 0.9, 0.9)
    a = lesion_components(gaussian_filter(rng.random((24, 40, 40)), 1.2) > 0.55, spacing, cfg)
    b = lesion_components(gaussian_filter(rng.random((24, 40, 40)), 1.2) > 0.55, spacing, cfg)
    assert a[1].size > 10 and b[1].size > 10
    for own, other in ((a, b), (b, a)):
        got = _detected_anima(*own, *other, cfg)
        assert np.array_equal(got, _anima_by_the_book(*own, *other, cfg))
    assert 0 < got.sum() < got.size  # some found, some not: the comparison says something
