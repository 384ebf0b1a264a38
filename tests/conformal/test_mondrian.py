"""Per-group calibration and lesion-size bins."""

import numpy as np
import pytest

from volseg.conformal import (
    CRCResult,
    LTTResult,
    NoValidThresholdError,
    NotMonotoneError,
    bin_names,
    calibrate_groups,
    crc_calibrate,
    size_bins,
)

GRID = np.linspace(0.0, 1.0, 21)


def _group(rng, n, scale):
    """FNR-like losses (n, 21): a lesion is missed once the threshold passes its score; small ``scale`` = hard."""
    scores = np.minimum(rng.exponential(scale, n), 1.0)
    return (scores[:, None] < GRID[None, :]).astype(float)


def test_groups_with_different_loss_levels_get_different_indices():
    rng = np.random.default_rng(0)
    groups = {"small": _group(rng, 400, 0.2), "large": _group(rng, 400, 2.0)}
    res = calibrate_groups(groups, "crc", alpha=0.1)
    assert list(res) == ["small", "large"] and all(isinstance(r, CRCResult) for r in res.values())
    assert res["small"].index < res["large"].index
    for name, losses in groups.items():  # each group is its own CRC problem
        assert res[name].index == crc_calibrate(losses, 0.1).index
    res = calibrate_groups(groups, "ltt", alpha=0.1, delta=0.1, pvalue="wsr", fwer="bonferroni")
    assert all(isinstance(r, LTTResult) and r.pvalue_method == "wsr" for r in res.values())
    assert res["small"].index < res["large"].index


def test_too_few_cases_in_one_group_names_it():
    rng = np.random.default_rng(1)
    groups = {"large": _group(rng, 100, 2.0), "small": _group(rng, 5, 0.2)}
    with pytest.raises(NoValidThresholdError, match=r"^group 'small': no grid setting meets alpha 0.1 with 5 .*at least 9"):
        calibrate_groups(groups, "crc", alpha=0.1)
    with pytest.raises(NoValidThresholdError, match="^group 'small': no grid setting can be certified"):
        calibrate_groups(groups, "ltt", alpha=0.1, delta=0.1)


def test_non_monotone_group_names_it():
    bad = np.zeros((20, 3))
    bad[4] = [0.0, 0.5, 0.2]
    with pytest.raises(NotMonotoneError, match="^group 'medium': case row 4"):
        calibrate_groups({"ok": np.zeros((20, 3)), "medium": bad}, "crc", alpha=0.2)
    with pytest.raises(ValueError, match="^group 'medium': losses must lie in"):
        calibrate_groups({"ok": np.zeros((20, 3)), "medium": bad * 3}, "crc", alpha=0.2, check=False)


def test_option_errors():
    groups = {"a": np.zeros((20, 3))}
    with pytest.raises(ValueError, match="crc, ltt"):
        calibrate_groups(groups, "rcps", alpha=0.1)
    with pytest.raises(ValueError, match="needs delta"):
        calibrate_groups(groups, "ltt", alpha=0.1)
    with pytest.raises(ValueError, match="'ltt' only"):
        calibrate_groups(groups, "crc", alpha=0.1, delta=0.1)
    with pytest.raises(ValueError, match="alpha"):
        calibrate_groups(groups, "crc", alpha=1.5)
    with pytest.raises(ValueError, match="delta"):
        calibrate_groups(groups, "ltt", alpha=0.1, delta=0.0)
    with pytest.raises(ValueError, match="empty"):
        calibrate_groups({}, "crc", alpha=0.1)
    with pytest.raises(ValueError, match="same grid size"):
        calibrate_groups({"a": np.zeros((20, 3)), "b": np.zeros((20, 4))}, "crc", alpha=0.1)


def test_size_bins_and_names():
    vol = np.array([0.0, 9.99, 10.0, 50.0, 99.9, 100.0, 5e4])
    assert size_bins(vol, [10, 100]).tolist() == [0, 0, 1, 1, 1, 2, 2]
    assert bin_names([10, 100]) == ["<10 mm3", "10-100 mm3", ">=100 mm3"]
    assert bin_names([0.5]) == ["<0.5 mm3", ">=0.5 mm3"]
    assert size_bins(np.array([0.2, 0.5]), [0.5]).tolist() == [0, 1]
    assert size_bins(np.array([]), [10]).tolist() == []
    names = bin_names([10, 100, 1000])
    assert len(names) == 4 and names[2] == "100-1000 mm3"


@pytest.mark.parametrize("edges", [[], [100, 10], [10, 10], [np.nan]])
def test_bad_edges(edges):
    with pytest.raises(ValueError, match="edges_mm3"):
        size_bins(np.array([1.0]), edges)
    with pytest.raises(ValueError, match="edges_mm3"):
        bin_names(edges)


@pytest.mark.parametrize("vol", [np.array([-1.0]), np.array([np.nan]), np.zeros((2, 2))])
def test_bad_volumes(vol):
    with pytest.raises(ValueError, match="volumes_mm3"):
        size_bins(vol, [10])
