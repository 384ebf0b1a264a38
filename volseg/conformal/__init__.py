"""Conformal calibration of a threshold grid: Conformal Risk Control, Learn then Test, per group.

One convention throughout: a calibration problem is a float loss matrix ``losses`` of shape
(n, G), n calibration cases by G settings of a grid.  Columns are ordered from the SAFEST
setting (index 0, lowest risk, e.g. the lowest probability threshold when the risk is a
false-negative rate) to the MOST PERMISSIVE (index G-1).  Losses lie in [0, B] (``bound``,
default 1.0).  Every method returns the most permissive grid index whose guarantee holds;
the caller maps that index to its threshold or lambda value.

- :func:`crc_calibrate`: E[loss of a new case] <= alpha (needs a loss that is non-decreasing
  along the grid in every case).
- :func:`ltt_calibrate`: P(risk <= alpha) >= 1 - delta (any loss, monotone or not).
- :func:`calibrate_groups`: one of the two per group (Mondrian), e.g. per lesion-size bin
  from :func:`size_bins`.

Example:
    >>> import numpy as np
    >>> from volseg.conformal import crc_calibrate
    >>> fnr = np.array([[0.0, 0.0, 0.5], [0.0, 0.5, 1.0]] * 10)  # 20 cases, 3 thresholds
    >>> crc_calibrate(fnr, alpha=0.3).index
    1
"""

from volseg.conformal.crc import (
    CRCResult,
    NoValidThresholdError,
    NotMonotoneError,
    check_monotone,
    crc_calibrate,
    min_cases,
)
from volseg.conformal.ltt import (
    LTTResult,
    bonferroni,
    fixed_sequence,
    hoeffding_bentkus_pvalue,
    ltt_calibrate,
    wsr_pvalue,
)
from volseg.conformal.mondrian import bin_names, calibrate_groups, size_bins

__all__ = [
    "CRCResult",
    "LTTResult",
    "NoValidThresholdError",
    "NotMonotoneError",
    "bin_names",
    "bonferroni",
    "calibrate_groups",
    "check_monotone",
    "crc_calibrate",
    "fixed_sequence",
    "hoeffding_bentkus_pvalue",
    "ltt_calibrate",
    "min_cases",
    "size_bins",
    "wsr_pvalue",
]
