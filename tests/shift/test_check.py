"""The shift check through predict: scores per case, calibration, flags, --refuse-shifted."""

import json
import shutil

import volseg
from volseg.cli.main import main
from volseg.io.nifti import Geometry, read_image, write_image
from volseg.shift.check import fit_shift_calibration, load_shift_check


def _dataset_root(model):
    return __import__("pathlib").Path(json.loads((model / "fingerprint.json").read_text())["dataset"]["root"])


def _shifted_inputs(data, out):
    """case_000 with 4 mm slices in the header, case_001 at 10 × intensity, case_002 unchanged."""
    out.mkdir()
    img, g = read_image(data / "imagesTr" / "case_000_0000.nii.gz")
    write_image(out / "thick_0000.nii.gz", img, Geometry(g.shape, (4.0 * g.spacing[0], *g.spacing[1:]), g.origin,
                                                         g.direction))
    img, g = read_image(data / "imagesTr" / "case_001_0000.nii.gz")
    write_image(out / "bright_0000.nii.gz", 10 * img, g)
    shutil.copy(data / "imagesTr" / "case_002_0000.nii.gz", out / "plain_0000.nii.gz")
    return out


def test_predict_scores_calibrates_and_flags(tiny_model, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    data = _dataset_root(model)
    assert all((model / f"fold_{f}" / "shift_features.pt").is_file() for f in (0, 1))
    first = volseg.predict([data / "imagesTr"], tmp_path / "in_distribution", model, progress=False)
    assert "no shift.json" in first["shift"]["warning"] and first["shift"]["flagged"] == []
    for rec in first["cases"].values():
        assert set(rec["shift"]["scores"]) == {"fingerprint", "features", "uncertainty"}
        assert "p_value" not in rec["shift"]
    assert not list((tmp_path / "in_distribution").glob("maps/*entropy*"))  # computed, not written
    cal = fit_shift_calibration(model, [tmp_path / "in_distribution" / "summary.json"], out_of_fold=False)
    assert len(cal["cases"]) == 4 and (model / "shift.json").is_file()
    assert load_shift_check(model, ["0", "1"]).calibration_cases == 4

    inputs = _shifted_inputs(data, tmp_path / "shifted")
    summary = volseg.predict([inputs], tmp_path / "pred", model, progress=False, shift_alpha=0.25)
    assert sorted(summary["shift"]["flagged"]) == ["bright", "thick"]
    thick = summary["cases"]["thick"]["shift"]
    assert thick["outside_training_range"][0]["statistic"] == "spacing z" and thick["p_value"] <= 0.25
    assert summary["cases"]["plain"]["shift"]["p_value"] > 0.25  # its own scores are among the calibration's
    assert (tmp_path / "pred" / "thick.nii.gz").is_file()  # flagged, still predicted

    capsys.readouterr()
    rc = main(["predict", "-i", str(inputs), "-o", str(tmp_path / "refused"), "-m", str(model),
               "--shift-alpha", "0.25", "--refuse-shifted", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 1 and "2 refused as shifted" in out
    assert "thick looks unlike the training data" in out and "spacing z 4 mm, training 1–1 mm" in out
    assert not (tmp_path / "refused" / "thick.nii.gz").exists() and (tmp_path / "refused" / "plain.nii.gz").is_file()
    assert json.loads((tmp_path / "refused" / "summary.json").read_text())["cases"]["thick"]["status"] == "refused"

    off = volseg.predict([inputs], tmp_path / "off", model, progress=False, shift_check=False)
    assert "shift" not in off and "shift" not in off["cases"]["thick"]


def test_too_few_calibration_cases_are_named(tiny_model, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    (model / "shift.json").write_text(json.dumps({"format": "volseg-shift", "cases": ["a", "b"], "tta": True,
                                                  "scores": {"fingerprint": [1.0, 2.0]}}))
    data = _dataset_root(model)
    summary = volseg.predict([data / "imagesTr" / "case_000_0000.nii.gz"], tmp_path / "p", model, progress=False)
    assert "cannot give a p-value below 0.333" in summary["shift"]["warning"]
    p = summary["cases"]["case_000"]["shift"]["p_values"]["fingerprint"]
    assert min(abs(p - v) for v in (1 / 3, 2 / 3, 1.0)) < 1e-5
    (model / "shift.json").write_text("{}")
    rc = main(["predict", "-i", str(data / "imagesTr"), "-o", str(tmp_path / "q"), "-m", str(model), "--no-progress"])
    assert rc != 0


def test_calibrate_shift_command(tiny_model, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    data = _dataset_root(model)
    volseg.predict([data / "imagesTr"], tmp_path / "site", model, progress=False)
    assert main(["calibrate-shift", str(model), str(tmp_path / "site")]) == 0
    assert "4 in-distribution cases (out-of-fold + predictions); smallest p-value 0.2" in capsys.readouterr().out
    assert main(["calibrate-shift", str(model), str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nothing" in err[0] and "summary.json" in err[0]
    other = tmp_path / "other"
    shutil.copytree(model, other)
    assert main(["calibrate-shift", str(other), str(tmp_path / "site")]) == 2  # predicted with another model
    assert "was predicted with" in capsys.readouterr().err


def test_shift_alpha_outside_zero_one_is_a_usage_error(capsys):
    import pytest

    for bad in ("0", "1.5", "x"):
        with pytest.raises(SystemExit) as e:
            main(["predict", "-i", "in", "-o", "out", "-m", "model", "--shift-alpha", bad])
        assert e.value.code == 2 and "expected a level in (0, 1)" in capsys.readouterr().err
