"""Learn then Test: p-values against their formulas, FWER procedures, errors, and the guarantee."""

import json
import math

import numpy as np
import pytest
from scipy.stats import binom

from volseg.conformal import (
    LTTResult,
    NoValidThresholdError,
    bonferroni,
    fixed_sequence,
    hoeffding_bentkus_pvalue,
    ltt_calibrate,
    wsr_pvalue,
)


def _hb_by_hand(r, n, a):
    m = min(r, a)
    h1 = (m * math.log(m / a) if m > 0 else 0.0) + (1 - m) * math.log((1 - m) / (1 - a))
    return min(1.0, math.exp(-n * h1), math.e * binom.cdf(math.ceil(n * r), n, a))


def _wsr_by_hand(x, a, d):
    """The WSR p-value written out one case at a time."""
    n = len(x)
    mus, sig2, ks = [], [0.25], []
    k = 1.0
    for i in range(1, n + 1):
        nu = min(1.0, math.sqrt(2 * math.log(1 / d) / (n * sig2[i - 1])))
        k *= 1 - nu * (x[i - 1] - a)
        ks.append(k)
        mus.append((0.5 + sum(x[:i])) / (1 + i))
        sig2.append((0.25 + sum((x[j] - mus[j]) ** 2 for j in range(i))) / (1 + i))
    return min(1.0, 1 / max(ks))


@pytest.mark.parametrize("r, n, a", [(0.05, 100, 0.1), (0.02, 50, 0.2), (0.033, 100, 0.1), (0.0, 30, 0.15)])
def test_hb_matches_its_formula(r, n, a):
    assert hoeffding_bentkus_pvalue(r, n, a) == pytest.approx(_hb_by_hand(r, n, a), rel=1e-10)


def test_hb_small_below_alpha_and_one_above():
    assert hoeffding_bentkus_pvalue(0.0, 100, 0.1) == pytest.approx(0.9 ** 100)  # Hoeffding term wins
    assert hoeffding_bentkus_pvalue(0.01, 500, 0.1) < 1e-12
    assert hoeffding_bentkus_pvalue(0.1, 100, 0.1) == 1.0
    assert hoeffding_bentkus_pvalue(0.5, 100, 0.1) == 1.0
    assert hoeffding_bentkus_pvalue(1.0, 100, 0.1) == 1.0
    assert hoeffding_bentkus_pvalue(0.09, 100, 0.1) > 0.3
    p = hoeffding_bentkus_pvalue(np.array([0.0, 0.05, 0.1, 0.3]), 100, 0.1)
    assert p.shape == (4,) and np.all(np.diff(p) >= 0)
    np.testing.assert_allclose(p, [_hb_by_hand(r, 100, 0.1) for r in (0.0, 0.05, 0.1, 0.3)], rtol=1e-10)
    # an empirical risk of exactly k/n uses k, not k + 1, in the binomial tail
    assert hoeffding_bentkus_pvalue(0.07, 100, 0.1) == pytest.approx(
        min(1.0, math.e * binom.cdf(7, 100, 0.1), _hb_by_hand(0.07, 100, 0.1)))


def test_hb_bad_inputs():
    with pytest.raises(ValueError, match="alpha"):
        hoeffding_bentkus_pvalue(0.1, 100, 1.0)
    with pytest.raises(ValueError, match="n must"):
        hoeffding_bentkus_pvalue(0.1, 0, 0.1)
    with pytest.raises(ValueError, match="risk_hat"):
        hoeffding_bentkus_pvalue(1.5, 10, 0.1)


def test_wsr_matches_its_formula():
    rng = np.random.default_rng(3)
    for x, a in [(rng.random(40) * 0.2, 0.2), ((rng.random(25) < 0.1).astype(float), 0.3), (rng.random(30), 0.4)]:
        assert wsr_pvalue(x, a, 0.1) == pytest.approx(_wsr_by_hand(list(x), a, 0.1), rel=1e-10)


def test_wsr_small_below_alpha_and_one_above():
    assert wsr_pvalue(np.zeros(200), 0.1, 0.1) < 1e-6
    assert wsr_pvalue(np.full(200, 0.5), 0.1, 0.1) == 1.0
    assert wsr_pvalue(np.full(200, 0.1), 0.1, 0.1) == 1.0
    with pytest.raises(ValueError, match="1-D"):
        wsr_pvalue(np.zeros((5, 2)), 0.1, 0.1)
    with pytest.raises(ValueError, match="losses"):
        wsr_pvalue(np.full(5, 2.0), 0.1, 0.1)
    with pytest.raises(ValueError, match="delta"):
        wsr_pvalue(np.zeros(5), 0.1, 0.0)


def test_fixed_sequence_stops_at_the_first_failure():
    assert fixed_sequence([0.01, 0.2, 0.01], 0.1).tolist() == [0]
    assert fixed_sequence([0.01, 0.05, 0.1, 0.3], 0.1).tolist() == [0, 1, 2]
    assert fixed_sequence([0.5, 0.01], 0.1).tolist() == []
    assert fixed_sequence([0.01, np.nan, 0.01], 0.1).tolist() == [0]


def test_bonferroni_divides_by_the_grid_size():
    assert bonferroni([0.01, 0.2, 0.01], 0.1).tolist() == [0, 2]
    assert bonferroni([0.04, 0.02, 0.025, 0.01], 0.1).tolist() == [1, 2, 3]  # threshold 0.025
    assert bonferroni([0.06, 0.06], 0.1).tolist() == []  # each 0.06 > 0.1 / 2


def test_calibrate_picks_the_last_certified_setting():
    losses = np.zeros((200, 3))
    losses[:, 1] = 1.0  # middle setting always fails; a non-monotone risk
    res = ltt_calibrate(losses, alpha=0.1, delta=0.1)
    assert isinstance(res, LTTResult) and res.index == 0 and res.valid.tolist() == [0]
    res = ltt_calibrate(losses, alpha=0.1, delta=0.1, fwer="bonferroni")
    assert res.index == 2 and res.valid.tolist() == [0, 2]
    assert res.pvalues[1] == 1.0 and res.pvalues[0] < 0.1 / 3
    np.testing.assert_allclose(res.empirical_risk, [0, 1, 0])
    d = json.loads(json.dumps(res.to_dict()))
    assert d["index"] == 2 and d["valid"] == [0, 2] and d["fwer_method"] == "bonferroni" and d["pvalue_method"] == "hb"
    assert d["n"] == 200 and d["delta"] == 0.1 and len(d["pvalues"]) == 3


def test_bound_rescales_losses_and_alpha():
    rng = np.random.default_rng(5)
    losses = np.sort(rng.random((150, 6)) * 0.3, axis=1)
    for pv in ("hb", "wsr"):
        one = ltt_calibrate(losses, 0.1, 0.1, pvalue=pv)
        two = ltt_calibrate(2 * losses, 0.2, 0.1, bound=2.0, pvalue=pv)
        assert one.index == two.index
        np.testing.assert_allclose(one.pvalues, two.pvalues)
        np.testing.assert_allclose(two.empirical_risk, 2 * one.empirical_risk)


def test_nothing_certified_raises():
    with pytest.raises(NoValidThresholdError, match="no grid setting can be certified at alpha 0.1 with probability 0.9 on 10"):
        ltt_calibrate(np.zeros((10, 4)), alpha=0.1, delta=0.1)  # 0.9 ** 10 is far above delta


@pytest.mark.parametrize("kw, match", [
    (dict(alpha=0.0), "alpha"), (dict(alpha=1.0), "alpha"), (dict(alpha=-0.1), "alpha"),
    (dict(delta=0.0), "delta"), (dict(delta=1.2), "delta"),
    (dict(pvalue="bonferroni"), "hb, wsr"), (dict(fwer="holm"), "fixed_sequence, bonferroni"),
    (dict(bound=0.01), r"\[0, 0.01\]"),
])
def test_bad_options(kw, match):
    args = dict(alpha=0.1, delta=0.1) | kw
    with pytest.raises(ValueError, match=match):
        ltt_calibrate(np.full((50, 3), 0.02), **args)


def test_alpha_not_below_bound():
    with pytest.raises(ValueError, match="not below the loss bound"):
        ltt_calibrate(np.zeros((50, 3)), alpha=0.5, delta=0.1, bound=0.5)


@pytest.mark.parametrize("pvalue", ["hb", "wsr"])
@pytest.mark.parametrize("fwer", ["fixed_sequence", "bonferroni"])
def test_chosen_setting_rarely_exceeds_alpha(pvalue, fwer):
    """P(true risk of the chosen column > alpha) <= delta over 500 draws of calibration cases."""
    rng = np.random.default_rng(11)
    alpha, delta, n, reps = 0.1, 0.1, 300, 500
    true_risk = np.r_[np.linspace(0.0, 0.1, 11), np.linspace(0.101, 0.14, 10)]  # known, safest first
    wrong = naive_wrong = chosen = 0
    for _ in range(reps):
        losses = (rng.random(n)[:, None] < true_risk[None, :]).astype(float)  # Bernoulli(true_risk)
        naive = np.flatnonzero(losses.mean(0) <= alpha)
        naive_wrong += naive.size > 0 and true_risk[naive[-1]] > alpha
        try:
            index = ltt_calibrate(losses, alpha, delta, pvalue=pvalue, fwer=fwer).index
        except NoValidThresholdError:
            continue
        chosen += 1
        wrong += true_risk[index] > alpha
    assert wrong / reps <= delta + 0.03
    assert chosen > 0.9 * reps  # it does certify something most of the time
    assert naive_wrong / reps > 0.3  # and the plain empirical choice would fail this check
