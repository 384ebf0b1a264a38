"""Re-runs of preprocessing: what counts as up to date."""

import json

import numpy as np
import pytest
from synthetic import make_dataset

from volseg.io.atomic import save_npy, write_json
from volseg.io.dataset import load_dataset
from volseg.preprocessing.run import is_up_to_date, source_record


@pytest.fixture
def done(tmp_path):
    """A dataset case with hand-written preprocessed files that look complete."""
    case = load_dataset(make_dataset(tmp_path / "d", n_cases=1, shape=(8, 9, 10))).cases[0]
    out = tmp_path / "pre"
    save_npy(out / "case_000.npy", np.zeros((1, 8, 9, 10), np.float32))
    save_npy(out / "case_000_seg.npy", np.zeros((1, 8, 9, 10), np.int16))
    write_json(out / "case_000.json", {"source": source_record(case, "h")})
    return case, out


def test_complete_case_is_up_to_date(done):
    case, out = done
    assert is_up_to_date(out, case, "h")
    assert not is_up_to_date(out, case, "other plan")


@pytest.mark.parametrize("name", ["case_000.npy", "case_000_seg.npy"])
def test_damaged_npy_is_not_up_to_date(done, name):
    """Regression: a preprocessed .npy cut short was reported as up to date on a re-run."""
    case, out = done
    path = out / name
    path.write_bytes(path.read_bytes()[:-100])
    assert not is_up_to_date(out, case, "h")


def test_missing_seg_is_not_up_to_date(done):
    case, out = done
    (out / "case_000_seg.npy").unlink()
    assert not is_up_to_date(out, case, "h")


def test_rerun_rewrites_a_damaged_case(tmp_path, caplog):
    from volseg.planning.run import plan_and_preprocess

    data = make_dataset(tmp_path / "d", n_cases=2, shape=(12, 14, 16), spacing=(1.0, 1.0, 1.0))
    out = tmp_path / "out"
    plans = plan_and_preprocess(data, out, device="cpu", num_workers=1, progress=False)
    folder = out / "preprocessed" / plans["default_configuration"]
    good = np.load(folder / "case_001.npy")
    damaged = folder / "case_001.npy"
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    with caplog.at_level("INFO"):
        plan_and_preprocess(data, out, device="cpu", num_workers=1, progress=False)
    assert "1 cases written, 1 up to date" in caplog.text and "case_001.npy: missing or damaged" in caplog.text
    np.testing.assert_array_equal(np.load(damaged), good)
    assert json.loads((folder / "case_001.json").read_text())["case_id"] == "case_001"
