"""Conformal p-values: uniform on exchangeable scores, and the combined test's false-alarm rate."""

import numpy as np
import pytest

from volseg.shift.pvalues import combined_pvalue, conformal_pvalue, smallest_pvalue


def test_pvalue_is_uniform_on_exchangeable_scores():
    rng = np.random.default_rng(0)
    n, trials = 19, 4000
    p = np.array([conformal_pvalue(s[:n], s[n]) for s in rng.gamma(2.0, size=(trials, n + 1))])
    values, counts = np.unique(p, return_counts=True)
    assert np.allclose(values, np.arange(1, n + 2) / (n + 1))  # every rank occurs
    expected = trials / (n + 1)
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected))
    for alpha in (0.05, 0.1, 0.25, 0.5):
        assert np.mean(p <= alpha) <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / trials)


def test_pvalue_counts_ties_against_the_test_case():
    assert conformal_pvalue([1.0, 2.0, 3.0], 3.0) == pytest.approx(2 / 4)
    assert conformal_pvalue([1.0, 2.0, 3.0], 9.0) == pytest.approx(1 / 4) == smallest_pvalue(3)
    assert conformal_pvalue([], 1.0) == 1.0


def test_combined_pvalue_keeps_the_false_alarm_rate_across_scales():
    rng = np.random.default_rng(1)
    n, trials, alpha = 24, 3000, 0.08
    flagged = 0
    for _ in range(trials):
        base = rng.normal(size=n + 1)
        scores = {"a": 1000 * base + rng.normal(size=n + 1), "b": np.exp(rng.normal(size=n + 1)),
                  "c": 0.01 * rng.standard_t(3, size=n + 1)}
        cal = {k: v[:n] for k, v in scores.items()}
        flagged += combined_pvalue(cal, {k: v[n] for k, v in scores.items()}) <= alpha
    assert flagged / trials <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / trials)


def test_combined_pvalue_flags_a_case_extreme_in_one_score_only():
    rng = np.random.default_rng(2)
    cal = {"a": rng.normal(size=30), "b": rng.normal(size=30) * 50}
    assert combined_pvalue(cal, {"a": 0.0, "b": 1e4}) == pytest.approx(1 / 31)
    assert combined_pvalue(cal, {"a": 0.0, "b": 0.0}) > 0.3
    assert combined_pvalue(cal, {"other": 1.0}) is None
