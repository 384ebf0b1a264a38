import json

import numpy as np
import pytest
from synthetic import make_dataset

from volseg.cli.main import main
from volseg.errors import PlanError
from volseg.planning.plans import load_plans, plans_schema, save_plans, validate_plans
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


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_in_plan_are_rejected(planned, tmp_path, text):
    """Regression: "lr": NaN (read by Python's json, passed by the schema) was accepted."""
    import jsonschema

    _, out, _ = planned
    plans = json.loads((out / "plans.json").read_text())
    plans["configurations"]["3d_cpu"]["training"]["optimizer"]["lr"] = float(text)
    path = tmp_path / "plans.json"
    path.write_text(json.dumps(plans, indent=2))
    assert f'"lr": {text}' in path.read_text()
    if text == "NaN":  # the schema alone lets it through
        assert jsonschema.Draft202012Validator(plans_schema()).is_valid(json.loads(path.read_text()))
    with pytest.raises(PlanError, match=r"plans.json: invalid plan at configurations/3d_cpu/training/optimizer/lr: "
                                        r"-?(nan|inf) is not a finite number") as e:
        load_plans(path)
    assert "\n" not in str(e.value)


def test_first_non_finite_number_is_named_and_not_saved(planned, tmp_path):
    _, _, plans = planned
    edited = json.loads(json.dumps(plans))
    edited["normalization"][0]["std"] = float("inf")
    edited["configurations"]["3d_cpu"]["spacing"][1] = float("nan")
    with pytest.raises(PlanError, match=r"invalid plan at normalization/0/std: inf"):
        save_plans(edited, tmp_path / "plans.json")
    assert not (tmp_path / "plans.json").exists()


def test_a_memory_budget_too_small_for_any_unet_is_one_line(tmp_path, capsys):
    """Regression: a ValueError traceback (n_outputs: expected at least 1) from the loss set-up."""
    from synthetic import make_dataset

    from volseg.cli.main import main

    data = make_dataset(tmp_path / "big", n_cases=2, shape=(96, 128, 128), spacing=(1.0, 1.0, 1.0))
    assert main(["plan", str(data), "-o", str(tmp_path / "plan"), "--device", "cuda", "--memory-gb", "1",
                 "-j", "1", "--no-preprocess"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("volseg plan: error:") and "--memory-gb 1 is too small for a U-Net" in err
