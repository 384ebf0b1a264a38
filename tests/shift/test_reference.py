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


def test_the_training_fingerprint_comes_first(tmp_path):
    """A model with ``fingerprint.json`` and ``splits.json`` takes its training cases' statistics, not the file's."""
    record = {"case_id": "t", "spacing": [1.0, 1.0, 1.0], "shape": [10, 10, 10], "class_voxels": {"0": 1000},
              "image_intensity": [{"p00_5": 0.0, "p50": 50.0, "p99_5": 90.0, "std": 20.0}]}
    (tmp_path / "fingerprint.json").write_text(json.dumps({"cases": [record]}))
    (tmp_path / "splits.json").write_text(json.dumps([{"train": ["t"], "val": []}]))
    (tmp_path / FILE_NAME).write_text(json.dumps({"format": FORMAT, "version": 1,
                                                  "cases": {"a": {"spacing z": 2.0}}}))
    ref = fingerprint_reference(tmp_path, ["0"])
    assert ref.median["spacing z"] == 1.0 and ref.median["channel 0 image p50"] == 50.0


@pytest.mark.parametrize("text, says", [
    ("{", "invalid JSON"),
    (json.dumps({"format": "other", "cases": {"a": {"spacing z": 1.0}}}), "not a volseg shift fingerprint record"),
    (json.dumps({"format": FORMAT}), "has no 'cases' object"),
    (json.dumps({"format": FORMAT, "cases": {}}), "holds no cases"),
    (json.dumps({"format": FORMAT, "cases": {"a": None}}), "case 'a'"),
    (json.dumps({"format": FORMAT, "cases": {"a": {}}}), "case 'a'"),
    (json.dumps({"format": FORMAT, "cases": {"a": {"spacing z": None}}}), "case 'a'")])
def test_a_broken_file_is_one_line_naming_it(tmp_path, text, says):
    (tmp_path / FILE_NAME).write_text(text)
    with pytest.raises(ModelError) as e:
        load_fingerprint_statistics(tmp_path)
    assert FILE_NAME in str(e.value) and says in str(e.value) and "\n" not in str(e.value)
