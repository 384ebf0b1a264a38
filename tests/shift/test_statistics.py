"""Fingerprint statistics of one image, the training range, and the report's wording."""

import sys
from pathlib import Path

import numpy as np
import pytest

from volseg.shift.statistics import (FingerprintReference, case_statistics, describe, format_outside,
                                     record_statistics)


def _stats(spacing_z):
    return {"spacing z": spacing_z, "channel 0 image p50": 500.0}


def test_reference_names_the_statistic_outside_the_range_and_by_how_much():
    ref = FingerprintReference.from_statistics([_stats(z) for z in (1.0, 1.5, 2.0, 2.5)])
    score, outside = ref.deviation({"spacing z": 5.0, "channel 0 image p50": 500.0})
    assert [o["statistic"] for o in outside] == ["spacing z"]
    assert format_outside(outside[0]) == "spacing z 5 mm, training 1–2.5 mm"
    assert score == pytest.approx((5.0 - 1.75) / ref.scale["spacing z"])
    score_in, outside_in = ref.deviation({"spacing z": 1.75, "channel 0 image p50": 500.0})
    assert outside_in == [] and score_in < 1.0
    low = ref.deviation({"spacing z": 1.75, "channel 0 image p50": -700.0})[1]
    assert format_outside(low[0]) == "channel 0 median -700, training 500–500"


def test_statistics_missing_on_one_side_are_skipped():
    ref = FingerprintReference.from_statistics([{"a": 1.0, "b": 2.0}, {"a": 1.1}, {"a": 0.9, "b": 2.2}])
    assert set(ref.median) == {"a", "b"}  # b: two of three cases have it
    assert ref.deviation({"a": 1.0})[0] == pytest.approx(0.0)
    with pytest.raises(ValueError):
        FingerprintReference.from_statistics([])


def test_flip_along_z_mirrors_the_intensity_centroid():
    z = np.linspace(1, 2, 20, dtype=np.float32)[:, None, None]
    image = np.broadcast_to(z, (20, 8, 8))[None].copy()
    a = case_statistics(image, (1.0, 1.0, 1.0), None)
    b = case_statistics(image[:, ::-1].copy(), (1.0, 1.0, 1.0), None)
    assert a["channel 0 centroid z"] > 0.5
    assert b["channel 0 centroid z"] == pytest.approx(1 - a["channel 0 centroid z"], abs=1e-6)
    assert a["channel 0 centroid y"] == pytest.approx(0.5)
    assert describe("channel 0 centroid z").startswith("channel 0 intensity centroid z")


def test_fingerprint_record_gives_the_statistics_predict_measures(tmp_path):
    sys.path.insert(0, str(Path(__file__).parents[1]))
    from synthetic import make_dataset

    from volseg.fingerprint.case import fingerprint_case, load_case
    from volseg.io.dataset import load_dataset

    dataset = load_dataset(make_dataset(tmp_path / "d", n_cases=1, shape=(12, 16, 20)))
    case = dataset.cases[0]
    record, _ = fingerprint_case(case, dataset)
    images, label, geometry, _ = load_case(case, dataset)
    measured = case_statistics(images, geometry.spacing, label > 0)
    assert record_statistics(record) == pytest.approx(measured)
    assert record_statistics({k: v for k, v in record.items() if k != "image_intensity"}) is None
