"""Learn then Test (Angelopoulos, Bates, Candes, Jordan and Lei, 2021).

Convention: ``losses`` is a float matrix of shape (n, G), n calibration cases by G grid
settings, columns ordered from the safest setting (index 0) to the most permissive
(index G-1), every loss in [0, B].  Each column j is a null hypothesis "risk(j) > alpha";
a p-value per column and a family-wise error rate (FWER) procedure at level delta give the
set of certified columns, and the result is the most permissive of them.  Then
P(risk(index) <= alpha) >= 1 - delta over the draw of the calibration cases.  The loss need
not be monotone.  Losses and alpha are divided by B, so the p-values see losses in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import xlogy
from scipy.stats import binom

from volseg.conformal.crc import NoValidThresholdError, _check_level, _check_losses

PVALUES = ("hb", "wsr")
FWERS = ("fixed_sequence", "bonferroni")


def _h1(a: np.ndarray, b: float) -> np.ndarray:
    """Bernoulli KL divergence a log(a/b) + (1-a) log((1-a)/(1-b)), with 0 log 0 = 0 (a = 0 or 1)."""
    return xlogy(a, a / b) + xlogy(1.0 - a, (1.0 - a) / (1.0 - b))


def hoeffding_bentkus_pvalue(risk_hat: float | np.ndarray, n: int, alpha: float) -> float | np.ndarray:
    """Hoeffding-Bentkus p-value for the null "risk > alpha" from a mean of n losses in [0, 1].

    p = min(exp(-n h1(min(r, alpha), alpha)), e * P(Binom(n, alpha) <= ceil(n r))), capped at 1,
    with h1(a, b) = a log(a/b) + (1-a) log((1-a)/(1-b)) and r = ``risk_hat``.

    Args:
        risk_hat: Empirical risk r in [0, 1]: a float, or an array of any shape (one per column).
        n: Number of cases the means were taken over, >= 1.
        alpha: Risk level in (0, 1).

    Returns:
        A float for a scalar ``risk_hat``, else an array of its shape.

    Example:
        >>> f"{hoeffding_bentkus_pvalue(0.0, 100, 0.1):.3g}"  # 0.9 ** 100
        '2.66e-05'
    """
    a = _check_level("alpha", alpha)
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    r = np.asarray(risk_hat, dtype=float)
    if not np.all(np.isfinite(r)) or r.min(initial=0.0) < 0.0 or r.max(initial=0.0) > 1.0:
        raise ValueError("risk_hat must lie in [0, 1]")
    hoeffding = np.exp(-n * _h1(np.minimum(r, a), a))
    k = np.ceil(n * r - 1e-9)  # the tolerance keeps r = k/n, rounded up by float error, at k
    bentkus = np.e * binom.cdf(k, int(n), a)
    p = np.minimum(1.0, np.minimum(hoeffding, bentkus))
    return float(p) if p.ndim == 0 else p


def _wsr_pvalues(losses: np.ndarray, alpha: float, delta: float) -> np.ndarray:
    """WSR p-values (G,) of the columns of an (n, G) matrix of losses in [0, 1]."""
    n = losses.shape[0]
    i = np.arange(1, n + 1, dtype=float)[:, None]
    mu = (0.5 + np.cumsum(losses, axis=0)) / (1.0 + i)
    sigma2 = (0.25 + np.cumsum((losses - mu) ** 2, axis=0)) / (1.0 + i)
    sigma2_prev = np.vstack([np.full((1, losses.shape[1]), 0.25), sigma2[:-1]])
    nu = np.minimum(1.0, np.sqrt(2.0 * np.log(1.0 / delta) / (n * sigma2_prev)))
    log_k = np.cumsum(np.log1p(-nu * (losses - alpha)), axis=0)  # factors >= alpha > 0
    return np.minimum(1.0, np.exp(-log_k.max(axis=0)))


def wsr_pvalue(losses_column: np.ndarray, alpha: float, delta: float) -> float:
    """Waudby-Smith-Ramdas betting p-value for the null "mean loss > alpha".

    For losses L_1..L_n in [0, 1], taken in the order given (which should be random):

        mu_i     = (1/2 + sum_{j<=i} L_j) / (1 + i)
        sigma2_i = (1/4 + sum_{j<=i} (L_j - mu_j)^2) / (1 + i),     sigma2_0 = 1/4
        nu_i     = min(1, sqrt(2 log(1/delta) / (n sigma2_{i-1})))
        K_i      = prod_{j<=i} (1 - nu_j (L_j - alpha))
        p        = min(1, 1 / max_i K_i)

    K is a nonnegative supermartingale under the null, so p is valid by Ville's inequality;
    delta only tunes the bets nu_i, as in the LTT paper.

    Args:
        losses_column: Float array (n,) of losses in [0, 1], one per case.
        alpha: Risk level in (0, 1).
        delta: The FWER level the p-value will be compared with, in (0, 1).

    Returns:
        The p-value, a float in (0, 1].
    """
    a, d = _check_level("alpha", alpha), _check_level("delta", delta)
    col = np.asarray(losses_column, dtype=float)
    if col.ndim != 1:
        raise ValueError(f"losses_column must be 1-D (cases,), got shape {col.shape}")
    return float(_wsr_pvalues(_check_losses(col[:, None], 1.0), a, d)[0])


def fixed_sequence(pvalues: np.ndarray, delta: float) -> np.ndarray:
    """Fixed-sequence testing: test indices 0, 1, 2, ... and stop at the first p > delta.

    Controls the FWER at delta when the order is fixed in advance (here: safest first).

    Args:
        pvalues: Float array (G,), one p-value per grid index.
        delta: FWER level in (0, 1).

    Returns:
        Int array of the accepted indices, a prefix 0..k-1 (empty when p[0] > delta).
    """
    d = _check_level("delta", delta)
    p = np.asarray(pvalues, dtype=float).ravel()
    fails = np.flatnonzero(~(p <= d))  # NaN counts as a failure
    return np.arange(int(fails[0]) if fails.size else p.size, dtype=int)


def bonferroni(pvalues: np.ndarray, delta: float) -> np.ndarray:
    """Bonferroni correction: accept every index with p <= delta / G.

    Args:
        pvalues: Float array (G,), one p-value per grid index.
        delta: FWER level in (0, 1).

    Returns:
        Int array of the accepted indices, ascending (not necessarily a prefix).
    """
    d = _check_level("delta", delta)
    p = np.asarray(pvalues, dtype=float).ravel()
    return np.flatnonzero(p <= d / max(p.size, 1)).astype(int)


@dataclass(frozen=True, eq=False)
class LTTResult:
    """The outcome of :func:`ltt_calibrate`.

    Attributes:
        index: The most permissive certified grid index (columns ordered safest first).
        valid: Int array of all certified grid indices, ascending.
        pvalues: Float array (G,), one p-value per grid column.
        n: Number of calibration cases.
        alpha: Risk level.
        delta: Allowed probability that the chosen setting's risk exceeds alpha.
        pvalue_method: "hb" or "wsr".
        fwer_method: "fixed_sequence" or "bonferroni".
        empirical_risk: Float array (G,) of the mean calibration loss per column, in loss units.
    """

    index: int
    valid: np.ndarray
    pvalues: np.ndarray
    n: int
    alpha: float
    delta: float
    pvalue_method: str
    fwer_method: str
    empirical_risk: np.ndarray

    def to_dict(self) -> dict:
        """A JSON-friendly dict: plain ints, floats, strings and lists."""
        return {"method": "ltt", "index": int(self.index), "valid": [int(v) for v in self.valid],
                "pvalues": [float(v) for v in self.pvalues], "n": int(self.n), "alpha": float(self.alpha),
                "delta": float(self.delta), "pvalue_method": self.pvalue_method,
                "fwer_method": self.fwer_method, "empirical_risk": [float(v) for v in self.empirical_risk]}


def ltt_calibrate(losses: np.ndarray, alpha: float, delta: float, bound: float = 1.0,
                  pvalue: str = "hb", fwer: str = "fixed_sequence") -> LTTResult:
    """Choose the most permissive grid index certified to have risk <= alpha with probability 1 - delta.

    Args:
        losses: Float array (n, G) with entries in [0, ``bound``]; columns ordered from the
            safest setting (index 0) to the most permissive (index G-1).  Need not be monotone.
        alpha: Risk level, in (0, 1) and below ``bound``, in the losses' units.
        delta: Allowed probability of certifying a setting whose risk exceeds alpha, in (0, 1).
        bound: Upper bound B of the losses; losses and alpha are divided by it.
        pvalue: "hb" (Hoeffding-Bentkus, from the mean) or "wsr" (Waudby-Smith-Ramdas, sequential).
        fwer: "fixed_sequence" (safest first, stop at the first failure) or "bonferroni".

    Returns:
        An :class:`LTTResult`; map ``result.index`` to the grid's threshold.

    Raises:
        ValueError: On levels outside (0, 1), unknown method names or invalid losses.
        NoValidThresholdError: If no grid setting can be certified.

    Example:
        >>> fnr = np.array([[0.0, 0.0, 0.5], [0.0, 0.5, 1.0]] * 50)  # 100 cases, 3 thresholds
        >>> ltt_calibrate(fnr, alpha=0.4, delta=0.1).index
        1
    """
    a, d = _check_level("alpha", alpha), _check_level("delta", delta)
    if pvalue not in PVALUES:
        raise ValueError(f"unknown pvalue method {pvalue!r}; choose one of {', '.join(PVALUES)}")
    if fwer not in FWERS:
        raise ValueError(f"unknown fwer method {fwer!r}; choose one of {', '.join(FWERS)}")
    arr, b = _check_losses(losses, bound), float(bound)
    if a >= b:
        raise ValueError(f"alpha {a:g} is not below the loss bound {b:g}, so every setting meets it trivially")
    n, scaled, a_scaled = arr.shape[0], arr / b, a / b
    if pvalue == "hb":
        p = np.asarray(hoeffding_bentkus_pvalue(scaled.mean(axis=0), n, a_scaled), dtype=float)
    else:
        p = _wsr_pvalues(scaled, a_scaled, d)
    valid = fixed_sequence(p, d) if fwer == "fixed_sequence" else bonferroni(p, d)
    if valid.size == 0:
        raise NoValidThresholdError(
            f"no grid setting can be certified at alpha {a:g} with probability {1 - d:g} on {n} calibration "
            f"cases (smallest p-value {p.min():.3g}, {pvalue}/{fwer}); add cases or raise alpha or delta")
    empirical = arr.mean(axis=0)
    for v in (valid, p, empirical):
        v.setflags(write=False)
    return LTTResult(index=int(valid[-1]), valid=valid, pvalues=p, n=n, alpha=a, delta=d,
                     pvalue_method=pvalue, fwer_method=fwer, empirical_risk=empirical)
