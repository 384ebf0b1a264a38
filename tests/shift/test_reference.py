"""The fingerprint statistics file of an imported model's shift check."""

import json

import pytest

from volseg.errors import ModelError
from volseg.shift.check import fingerprint_reference
from volseg.shift.reference import FILE_NAME, FORMAT, load_fingerprint_statistics


def test_the_file_serves_every_fold_when_the_model_has_no_fingerprint(tmp_path):
    cases = {"a": {"spacing z": 2.0, "channel 0 image p50": 100.0}, "b": {"spacing z": 2.5, "channel 0 image p50": 120.0}}
    assert fingerprint_reference(tmp_path, ["0"]) is None
    (tmp_path / FILE_NAME).write_text(json.dumps({"format": FORMAT, "version": 1, "cases": cases}))
    for folds in (["0"], ["0", "1"], ["all"]):
        ref = fingerprint_reference(tmp_path, folds)
        assert ref.cases == 2 and ref.low["spacing z"] == 2.0 and ref.high["spacing z"] == 2.5
    score, outside = ref.deviation({"spacing z": 5.0, "channel 0 image p50": 110.0})
    assert outside[0]["statistic"] == "spacing z" and score == pytest.approx(2.75 / (1.4826 * 0.25))


@pytest.mark.parametrize("text", ["{", json.dumps({"format": "other", "cases": {"a": {}}}),
                                  json.dumps({"format": FORMAT, "cases": {}})])
def test_a_broken_file_is_one_line_naming_it(tmp_path, text):
    (tmp_path / FILE_NAME).write_text(text)
    with pytest.raises(ModelError) as e:
        load_fingerprint_statistics(tmp_path)
    assert FILE_NAME in str(e.value) and "\n" not in str(e.value)
