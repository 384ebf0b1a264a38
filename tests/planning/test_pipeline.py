import json

import numpy as np
import pytest
from synthetic import make_dataset

from volseg.cli.main import main
from volseg.errors import PlanError
from volseg.planning.plans import load_plans, validate_plans
from volseg.planning.run import plan_and_preprocess


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    root = tmp_path_factory.mktemp("plan")
    data = make_dataset(root / "Dataset001_Blobs", n_cases=3, channels=("CT",), n_labels=2)
    out = root / "out"
    plans = plan_and_preprocess(data, out, device="cpu", num_workers=1, progress=False,
                                configurations=["3d_cpu", "3d_fullres"])
    return data, out, plans


def test_plan_files_and_schema(planned):
    _, out, plans = planned
    assert (out / "fingerprint.json").is_file() and (out / "plans.json").is_file()
    assert load_plans(out / "plans.json") == plans
    assert plans["default_configuration"] == "3d_cpu"
    assert plans["normalization"][0]["scheme"] == "ct"
    assert plans["outputs"] == {"mode": "softmax", "num_outputs": 3, "class_values": [0, 1, 2]}
    fp = json.loads((out / "fingerprint.json").read_text())
    assert len(fp["cases"]) == 3 and fp["median_spacing"] == pytest.approx([2.5, 0.8, 0.7])


def test_preprocessed_cases_match_plan(planned):
    _, out, plans = planned
    for name in ("3d_cpu", "3d_fullres"):
        cfg = plans["configurations"][name]
        folder = out / "preprocessed" / name
        props = json.loads((folder / "case_000.json").read_text())
        data = np.load(folder / "case_000.npy", mmap_mode="r")
        seg = np.load(folder / "case_000_seg.npy", mmap_mode="r")
        assert data.dtype == np.float32 and seg.dtype == np.int16
        assert data.shape[1:] == seg.shape[1:] == tuple(props["shape_after_resampling"])
        assert props["spacing"] == cfg["spacing"]
        for value, locs in props["class_locations"].items():
            z, y, x = np.asarray(locs).T
            assert (seg[0, z, y, x] == int(value)).all()


def test_rerun_skips_up_to_date_cases(planned, caplog):
    data, out, _ = planned
    before = {p: p.stat().st_mtime_ns for p in (out / "preprocessed" / "3d_cpu").iterdir()}
    with caplog.at_level("INFO"):
        plan_and_preprocess(data, out, device="cpu", num_workers=1, progress=False)
    assert "0 cases written, 3 up to date" in caplog.text
    after = {p: p.stat().st_mtime_ns for p in (out / "preprocessed" / "3d_cpu").iterdir()}
    assert before == after


def test_hand_edited_plan_is_kept_and_validated(planned, tmp_path):
    data, out, plans = planned
    edited = json.loads(json.dumps(plans))
    edited["configurations"]["3d_cpu"]["patch_size"][0] += 1
    with pytest.raises(PlanError, match="not a multiple of the network's total stride"):
        validate_plans(edited, "plans.json")
    edited = json.loads(json.dumps(plans))
    del edited["configurations"]["3d_cpu"]["training"]["epochs"]
    with pytest.raises(PlanError, match="3d_cpu/training.*'epochs' is a required property"):
        validate_plans(edited, "plans.json")


def test_cli_show_and_bad_dataset(planned, tmp_path, capsys):
    _, out, _ = planned
    assert main(["plan", "--show", "-o", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "3d_cpu *" in shown and "patch" in shown
    assert main(["plan", str(tmp_path / "missing"), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "missing: dataset folder not found" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_bad_case_leaves_no_plan(tmp_path, capsys):
    data = make_dataset(tmp_path / "d", n_cases=2)
    (data / "labelsTr" / "case_001.nii.gz").write_bytes(b"\x1f\x8b\x08garbage")
    assert main(["plan", str(data), "-o", str(tmp_path / "o"), "-j", "1"]) == 2
    assert "case_001.nii.gz" in capsys.readouterr().err
    assert not (tmp_path / "o" / "plans.json").exists() and not (tmp_path / "o" / "fingerprint.json").exists()
