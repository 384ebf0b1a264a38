import numpy as np
import pytest

from volseg.conformal.risks import (BoxCase, DenseCase, component_counts, default_size_edges, dense_losses, get_risk,
                                    lesion_detection_scores, missed_fraction, ordered_grid, reference_lesions,
                                    size_group_names, box_losses)


def _two_lesions():
    ref = np.zeros((8, 16, 16), bool)
    ref[2:4, 2:4, 2:4] = True  # 8 voxels
    ref[5:7, 10:14, 10:14] = True  # 32 voxels
    score = np.zeros(ref.shape, np.float32)
    score[ref] = 0.9
    score[2:4, 2:4, 2:4] = 0.3  # the small lesion is found only below 0.3
    score[0, 12:15, 0:3] = 0.6  # a false positive component
    return DenseCase("c", score, ref, (1.0, 1.0, 1.0))


def test_lesion_fnr_counts_missed_lesions_per_threshold():
    case = _two_lesions()
    grid = ordered_grid(get_risk("lesion_fnr"), [0.1, 0.3, 0.5, 0.95])
    out = dense_losses(case, get_risk("lesion_fnr"), grid)
    # t=0.1: both found; t=0.3: the small lesion's voxels are not > 0.3; t=0.95: none
    np.testing.assert_allclose(out.losses["all"], [0.0, 0.5, 0.5, 1.0])
    np.testing.assert_array_equal(out.fp["all"], [1, 1, 1, 0])
    assert out.sizes == {"all": 2}


def test_coverage_decides_when_a_partly_covered_lesion_is_found():
    ref = np.zeros((4, 4, 10), bool)
    ref[1, 1, :] = True  # 10 voxels
    score = np.zeros(ref.shape, np.float32)
    score[1, 1, :3] = 0.8  # 30 % of the lesion above 0.5
    labels, n, _ = reference_lesions(ref, (1, 1, 1))
    d_low = lesion_detection_scores(score, labels, n, coverage=0.2)  # needs 3 voxels: found below 0.8
    d_high = lesion_detection_scores(score, labels, n, coverage=0.3)  # needs 4 voxels: found only below 0.0
    assert d_low[0] == pytest.approx(0.8) and d_high[0] == 0.0


def test_voxel_fnr_and_size_groups():
    case = _two_lesions()
    grid = ordered_grid(get_risk("voxel_fnr"), [0.1, 0.5])
    out = dense_losses(case, get_risk("voxel_fnr"), grid)
    np.testing.assert_allclose(out.losses["all"], [0.0, 8 / 40])
    by_size = dense_losses(case, get_risk("lesion_fnr"), grid, size_edges=[10.0])
    assert set(by_size.losses) == {"<10 mm3", ">=10 mm3"}
    np.testing.assert_allclose(by_size.losses["<10 mm3"], [0.0, 1.0])
    np.testing.assert_allclose(by_size.losses[">=10 mm3"], [0.0, 0.0])


def test_fdr_grid_is_descending_and_counts_false_components():
    case = _two_lesions()
    risk = get_risk("lesion_fdr")
    grid = ordered_grid(risk, [0.1, 0.5, 0.7])
    np.testing.assert_allclose(grid, [0.7, 0.5, 0.1])
    out = dense_losses(case, risk, grid)
    np.testing.assert_allclose(out.losses["all"], [0.0, 0.5, 1 / 3])


def test_lesion_free_case_has_no_fnr_loss():
    case = DenseCase("empty", np.full((4, 4, 4), 0.7, np.float32), np.zeros((4, 4, 4), bool), (1, 1, 1))
    out = dense_losses(case, get_risk("lesion_fnr"), np.array([0.5, 0.8]))
    assert out.losses == {} and list(out.fp["all"]) == [1, 0]


def test_component_counts_matches_brute_force():
    import cc3d

    rng = np.random.default_rng(0)
    score = rng.random((10, 12, 12)).astype(np.float32)
    ref = rng.random(score.shape) > 0.8
    grid = np.array([0.5, 0.8, 0.95])
    n_all, n_fp = component_counts(score, ref, grid)
    for j, t in enumerate(grid):
        lab, n = cc3d.connected_components(score > t, connectivity=6, return_N=True)
        fp = sum(1 for i in range(1, n + 1) if not ref[lab == i].any())
        assert (n_all[j], n_fp[j]) == (n, fp)


def test_box_losses_use_score_at_least_threshold():
    case = BoxCase("s", np.array([0.7, np.nan, 0.2]), np.array([0.9, 0.1]), np.array([4.0, 8.0, 12.0]))
    out = box_losses(case, np.array([0.2, 0.5, 0.8]))
    np.testing.assert_allclose(out.losses["all"], [1 / 3, 2 / 3, 1.0])
    np.testing.assert_array_equal(out.fp["all"], [1, 1, 1])
    by = box_losses(case, np.array([0.2, 0.5]), size_edges=[6.0])
    np.testing.assert_allclose(by.losses["<6 mm"], [0.0, 0.0])
    np.testing.assert_allclose(by.losses[">=6 mm"], [0.5, 1.0])


def test_missed_fraction_and_helpers():
    np.testing.assert_allclose(missed_fraction(np.array([0.2, np.nan]), np.array([0.1, 0.3])), [0.5, 1.0])
    assert size_group_names([10, 100], "mm3") == ["<10 mm3", "10-100 mm3", ">=100 mm3"]
    assert len(default_size_edges(np.arange(1, 31))) == 2
    with pytest.raises(ValueError, match="unknown risk"):
        get_risk("dice")
