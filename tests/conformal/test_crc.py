"""Conformal Risk Control: the index rule against hand computations, errors, and its guarantee."""

import json

import numpy as np
import pytest

from volseg.conformal import CRCResult, NoValidThresholdError, NotMonotoneError, check_monotone, crc_calibrate, min_cases

# 9 cases x 5 grid settings, safest first; column sums 0, 1, 2, 3, 5 (exact in floating point)
HAND = np.array([
    [0, 1, 1.0, 1.0, 1.0],
    [0, 0, 0.5, 0.5, 1.0],
    [0, 0, 0.5, 0.5, 1.0],
    [0, 0, 0.0, 0.5, 0.5],
    [0, 0, 0.0, 0.5, 0.5],
    [0, 0, 0.0, 0.0, 0.5],
    [0, 0, 0.0, 0.0, 0.5],
    [0, 0, 0.0, 0.0, 0.0],
    [0, 0, 0.0, 0.0, 0.0],
])


def test_index_matches_a_hand_computation():
    # adjusted = (column sum + B) / (n + 1) = (0+1)/10, (1+1)/10, (2+1)/10, (3+1)/10, (5+1)/10
    res = crc_calibrate(HAND, alpha=0.25)
    np.testing.assert_allclose(res.adjusted, [0.1, 0.2, 0.3, 0.4, 0.6])
    np.testing.assert_allclose(res.empirical_risk, [0, 1 / 9, 2 / 9, 3 / 9, 5 / 9])
    assert res.index == 1 and res.n == 9
    assert crc_calibrate(HAND, alpha=0.3).index == 2  # adjusted 0.3 <= 0.3: the bound is inclusive
    assert crc_calibrate(HAND, alpha=0.39).index == 2
    assert crc_calibrate(HAND, alpha=0.65).index == 4
    assert crc_calibrate(HAND, alpha=0.1).index == 0


def test_result_is_frozen_and_serialisable():
    res = crc_calibrate(HAND, alpha=0.25)
    assert isinstance(res, CRCResult)
    with pytest.raises(AttributeError):
        res.index = 3
    with pytest.raises(ValueError):
        res.adjusted[0] = 0.0
    d = json.loads(json.dumps(res.to_dict()))
    assert d["index"] == 1 and d["n"] == 9 and d["alpha"] == 0.25 and d["bound"] == 1.0
    assert d["adjusted"] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.6]) and len(d["empirical_risk"]) == 5


def test_prefix_rule_when_unchecked():
    """With check=False a non-monotone risk does not let the index jump past a failing column."""
    losses = np.zeros((19, 3))
    losses[:10, 1] = 1.0  # adjusted (0+1)/20, (10+1)/20, (0+1)/20
    assert crc_calibrate(losses, alpha=0.1, check=False).index == 0
    with pytest.raises(NotMonotoneError):
        crc_calibrate(losses, alpha=0.1)


def test_min_cases():
    assert min_cases(0.1) == 9
    assert min_cases(0.1, bound=2.0) == 19
    assert min_cases(0.05) == 19
    assert min_cases(0.2) == 4
    assert min_cases(0.6) == 1
    for alpha in (0.07, 0.1, 0.13, 0.3):
        n = min_cases(alpha)
        assert 1.0 / (n + 1) <= alpha and (n == 1 or 1.0 / n > alpha)


def test_too_few_cases_names_the_minimum():
    with pytest.raises(NoValidThresholdError, match="at least 9 calibration cases for alpha 0.1"):
        crc_calibrate(np.zeros((8, 4)), alpha=0.1)
    res = crc_calibrate(np.c_[np.zeros(9), np.ones(9)], alpha=0.1)  # zero-loss column: adjusted exactly 0.1
    assert res.index == 0
    assert issubclass(NoValidThresholdError, ValueError)


def test_enough_cases_but_safest_setting_too_risky():
    with pytest.raises(NoValidThresholdError, match="even the safest setting") as info:
        crc_calibrate(np.full((50, 3), 0.5), alpha=0.1)
    assert "at least" not in str(info.value) and "\n" not in str(info.value)


def test_non_monotone_row_is_named():
    losses = np.tile(np.linspace(0, 1, 5), (6, 1))
    losses[3, 2] = 0.9  # row 3: 0.25, 0.9, 0.75 -> falls between grid index 2 and 3
    with pytest.raises(NotMonotoneError, match=r"case row 3: .*grid index 2 .*grid index 3") as info:
        check_monotone(losses)
    msg = str(info.value)
    assert "ltt" in msg and "monotone" in msg and "\n" not in msg
    with pytest.raises(NotMonotoneError, match="case row 3"):
        crc_calibrate(losses, alpha=0.5)
    check_monotone(losses[[0, 1, 2, 4, 5]])  # the others are fine
    check_monotone(np.array([[0.5, 0.5 - 1e-12, 0.6]]))  # within tol


@pytest.mark.parametrize("alpha", [0, 1, 1.5, -0.1, float("nan")])
def test_alpha_outside_open_unit_interval(alpha):
    with pytest.raises(ValueError, match="alpha"):
        crc_calibrate(HAND, alpha=alpha)
    with pytest.raises(ValueError, match="alpha"):
        min_cases(alpha)


@pytest.mark.parametrize("bad", [
    np.full((10, 3), -0.1),
    np.full((10, 3), 1.01),
    np.array([[0.0, np.nan]] * 10),
    np.array([[0.0, np.inf]] * 10),
])
def test_losses_outside_bound_or_not_finite(bad):
    with pytest.raises(ValueError, match="losses"):
        crc_calibrate(bad, alpha=0.5)


@pytest.mark.parametrize("shape", [(10,), (10, 2, 2), (0, 3), (10, 0)])
def test_losses_of_wrong_shape(shape):
    with pytest.raises(ValueError, match="losses"):
        crc_calibrate(np.zeros(shape), alpha=0.5)


def test_bound_two():
    losses = 2.0 * HAND  # column sums 0, 2, 4, 6, 10; adjusted (s + 2) / 10
    res = crc_calibrate(losses, alpha=0.45, bound=2.0)
    np.testing.assert_allclose(res.adjusted, [0.2, 0.4, 0.6, 0.8, 1.2])
    assert res.index == 1 and res.bound == 2.0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        crc_calibrate(losses, alpha=0.45)  # default bound 1 rejects losses of 2
    with pytest.raises(NoValidThresholdError, match="at least 19"):
        crc_calibrate(np.zeros((18, 2)), alpha=0.1, bound=2.0)
    with pytest.raises(ValueError, match="bound"):
        crc_calibrate(HAND, alpha=0.3, bound=0.0)


def _fnr_pool(rng, n_cases, thresholds):
    """Per-case lesion-wise false-negative rate at each threshold: non-decreasing along the grid."""
    out = np.empty((n_cases, thresholds.size))
    for i in range(n_cases):
        scores = rng.beta(rng.uniform(0.5, 4.0), 1.0, size=rng.integers(1, 9))  # lesion scores of one case
        out[i] = (scores[:, None] < thresholds[None, :]).mean(0)
    return out


def test_expected_test_risk_is_controlled():
    """Over random calibration/test splits: alpha - 2B/(n+1) <= E[test risk] <= alpha (up to Monte Carlo)."""
    rng = np.random.default_rng(1234)
    thresholds = np.linspace(0.0, 0.6, 241)
    pool = _fnr_pool(rng, 600, thresholds)
    alpha, n, reps = 0.1, 30, 2000
    risks, naive = np.empty(reps), np.empty(reps)
    for r in range(reps):
        perm = rng.permutation(pool.shape[0])
        cal, test = pool[perm[:n]], pool[perm[n:]]
        risks[r] = test[:, crc_calibrate(cal, alpha).index].mean()
        naive[r] = test[:, np.count_nonzero(np.logical_and.accumulate(cal.mean(0) <= alpha)) - 1].mean()
    tol = 3 * risks.std() / np.sqrt(reps)
    assert risks.mean() <= alpha + tol
    assert risks.mean() >= alpha - 2.0 / (n + 1) - tol
    # the check has teeth: picking by the plain empirical risk overshoots alpha on this pool
    assert naive.mean() > alpha + 3 * naive.std() / np.sqrt(reps)
