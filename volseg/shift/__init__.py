"""Whether an input looks like the training data: fingerprint statistics, bottleneck features
and uncertainty, each with a conformal p-value against in-distribution cases (see
:mod:`volseg.shift.check`)."""

from volseg.shift.check import ShiftCheck, fit_shift_calibration, load_shift_check
from volseg.shift.pvalues import combined_pvalue, conformal_pvalue

__all__ = ["ShiftCheck", "combined_pvalue", "conformal_pvalue", "fit_shift_calibration", "load_shift_check"]
