"""Shifted demo inputs: what each shift does, and that the fingerprint check flags each on a small case."""

import numpy as np
import pytest

from volseg.demo.common import ellipsoid, smooth_field
from volseg.demo.shifts import DEMO_NOISE, SHIFTS, apply_shift
from volseg.io.nifti import Geometry
from volseg.shift.check import ShiftCheck
from volseg.shift.statistics import FingerprintReference, case_statistics

SHAPE = (24, 28, 24)
GEOM = Geometry(SHAPE, (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


def small_case(seed):
    """A two-timepoint head: brighter towards +y (an orientation), Rician noise of the MS demo's
    level, and a follow-up acquired 50% brighter than its baseline (what makes a swap visible)."""
    rng = np.random.default_rng(seed)
    c = np.asarray(SHAPE) / 2 + rng.uniform(-1, 1, 3)
    radii = np.asarray(SHAPE) * rng.uniform(0.36, 0.42, 3)
    head = ellipsoid(SHAPE, c, radii)
    front = (np.arange(SHAPE[1])[None, :, None] - (c[1] - radii[1])) / (2 * radii[1])  # 0..1 across the head
    ramp = 400.0 + 600.0 * np.clip(front, 0, 1)
    channels = []
    for gain in (1.0, 1.5):
        img = gain * ramp * np.exp(smooth_field(SHAPE, rng, 8.0, 0.1))
        noisy = np.sqrt((img + rng.normal(0, DEMO_NOISE, SHAPE)) ** 2 + rng.normal(0, DEMO_NOISE, SHAPE) ** 2)
        channels.append(np.where(head, noisy, 0.0))
    return np.stack(channels).astype(np.float32)


def _scores(check, images, geometry):
    return check.scores(images, geometry.spacing, None, None, None)


@pytest.fixture(scope="module")
def check():
    reference = FingerprintReference.from_statistics([case_statistics(small_case(s), GEOM.spacing, None)
                                                      for s in range(30)])
    probe = ShiftCheck(reference, None, None)
    cal = [_scores(probe, small_case(s), GEOM)[0]["fingerprint"] for s in range(100, 120)]
    return ShiftCheck(reference, None, {"cases": [str(i) for i in range(20)], "scores": {"fingerprint": cal}}, 0.05)


def test_every_shift_is_flagged_on_a_small_case(check):
    images = small_case(1000)
    plain = check.report(*_scores(check, images, GEOM))
    assert not plain["flagged"]
    for name in SHIFTS:
        shifted, geometry = apply_shift(name, images, GEOM, seed=3)
        rec = check.report(*_scores(check, shifted, geometry))
        assert rec["flagged"], (name, rec["scores"])
        assert rec["outside_training_range"], name


def test_unshifted_cases_are_rarely_flagged(check):
    flagged = sum(check.report(*_scores(check, small_case(s), GEOM))["flagged"] for s in range(200, 240))
    assert flagged <= 5  # 5% of 40 is 2


def test_what_each_shift_does():
    images = small_case(7)
    head = images[0] > 0
    assert apply_shift("spacing", images, GEOM)[1].spacing == (5.0, 2.0, 2.0)
    assert apply_shift("spacing", images, GEOM)[0].shape == (2, 10, 28, 24)
    assert np.array_equal(apply_shift("swap", images, GEOM)[0], images[::-1])
    assert np.array_equal(apply_shift("flip", images, GEOM)[0], images[:, :, ::-1])
    assert apply_shift("flip", images, GEOM)[1] == GEOM  # the header is left as it was
    assert not apply_shift("empty", images, GEOM)[0].any()
    assert np.allclose(apply_shift("scale", images, GEOM)[0], 4 * images)
    noisy = apply_shift("noise", images, GEOM)[0]
    assert (noisy - images)[0][head].std() > 2 * DEMO_NOISE  # sqrt(3² − 1) × the demo σ added
    inverted = apply_shift("inversion", images, GEOM)[0]
    assert np.corrcoef(inverted[0][head], images[0][head])[0, 1] < -0.5
    ct, ct_geom = apply_shift("ct", images, GEOM)
    assert ct.shape[0] == 2 and ct.min() < -900 and ct_geom.shape == ct.shape[1:]
    with pytest.raises(ValueError, match="unknown shift"):
        apply_shift("rotate", images, GEOM)
