"""calibrate → predict round trip, the record, and the command's one-line errors."""

import json

import numpy as np
import pytest

from volseg.cli.main import main
from volseg.conformal.calibrate import fit_calibration, guarantee
from volseg.conformal.risks import CaseLosses
from volseg.errors import VolsegError


def _cases(rows):
    return [CaseLosses(f"c{i}", {"all": np.asarray(r, float)}, {"all": np.arange(len(r), dtype=float)[::-1]},
                       {"all": 1}) for i, r in enumerate(rows)]


def test_record_recomputes_lambda_hat_by_hand():
    grid = np.array([0.1, 0.3, 0.5, 0.7])
    rows = [[0, 0, 0, 1]] * 7 + [[0, 0, 1, 1]] * 2 + [[0, 1, 1, 1]]  # n = 10
    cal = fit_calibration(_cases(rows), "lesion_fnr", 0.3, grid)
    # (n R + 1) / (n + 1) per column: 1/11, 2/11, 4/11, 11/11 → largest <= 0.3 is column 1
    assert cal["groups"]["all"]["index"] == 1 and cal["thresholds"] == {"all": 0.3}
    losses = np.array([v["all"] for v in cal["losses"].values()])
    n = len(losses)
    adjusted = (losses.sum(0) + 1) / (n + 1)
    assert int(np.flatnonzero(adjusted <= 0.3).max()) == cal["groups"]["all"]["index"]
    assert cal["calibration_cases"]["empirical_risk"]["all"] == pytest.approx(0.1)
    assert cal["calibration_cases"]["fp_per_case"] == pytest.approx(2.0)
    assert cal["naive"]["threshold"] == 0.5 and cal["naive"]["fp_per_case"] == pytest.approx(1.0)
    assert "at most 0.3" in guarantee({**cal, "guarantee": None})


def test_too_few_cases_and_bad_alpha_are_one_line_errors():
    grid = np.array([0.1, 0.5])
    with pytest.raises(VolsegError, match="at least 9"):
        fit_calibration(_cases([[0, 0]] * 5), "lesion_fnr", 0.1, grid)
    for alpha in (0.0, 1.0, 1.5):
        with pytest.raises(VolsegError, match="alpha"):
            fit_calibration(_cases([[0, 0]] * 20), "lesion_fnr", alpha, grid)
    with pytest.raises(VolsegError, match="not monotone"):
        fit_calibration(_cases([[0, 0]] * 20), "lesion_fdr", 0.1, grid)


def test_ltt_record_states_the_high_probability_guarantee():
    grid = np.array([0.9, 0.7, 0.5])  # fdr: safest (highest threshold) first
    rows = [[0, 0, 1]] * 40
    cal = fit_calibration(_cases(rows), "lesion_fdr", 0.2, grid, delta=0.1)
    assert cal["method"] == "ltt" and cal["thresholds"] == {"all": 0.7}
    assert "probability at least 0.9" in guarantee(cal)


def test_size_groups_apply_the_lowest_threshold():
    grid = np.array([0.1, 0.3, 0.5, 0.7])
    cases = []
    for i in range(20):
        small = np.array([0, 0, 1, 1.0]) if i % 2 else np.array([0, 0, 0, 1.0])
        cases.append(CaseLosses(f"c{i}", {"<10 mm3": small, ">=10 mm3": np.array([0, 0, 0, 0.0])},
                                {"all": np.zeros(4)}, {"<10 mm3": 1, ">=10 mm3": 1}))
    cal = fit_calibration(cases, "lesion_fnr", 0.2, grid, by="size")
    assert cal["groups"][">=10 mm3"]["threshold"] == 0.7
    assert cal["thresholds"] == {"all": cal["groups"]["<10 mm3"]["threshold"]} and cal["thresholds"]["all"] < 0.7


@pytest.fixture(scope="module")
def predicted(tiny_model, tmp_path_factory):
    """The tiny model's predictions of its 4 training cases, with probabilities, and the references."""
    import volseg
    from volseg.model import dataset_root

    root = dataset_root(tiny_model)
    out = tmp_path_factory.mktemp("oof") / "pred"
    volseg.predict([root / "imagesTr"], out, tiny_model, progress=False, save_probabilities=True, tta=False,
                   postprocess=False)
    return out, root / "labelsTr"


def test_calibrate_then_predict_calibrated(tiny_model, predicted, tmp_path, capsys):
    import volseg
    from volseg.io.nifti import read_image
    from volseg.model import dataset_root

    pred, ref = predicted
    cal_file = tmp_path / "calibration.json"
    rc = main(["calibrate", str(tiny_model), "--risk", "voxel_fnr", "--alpha", "0.5", "--predictions", str(pred),
               "--references", str(ref), "-o", str(cal_file)])
    assert rc == 0 and "at most 0.5" in capsys.readouterr().out
    cal = json.loads(cal_file.read_text())
    assert cal["n"] == 4 and len(cal["losses"]) == 4 and len(cal["grid"]) == 99
    t = cal["thresholds"]["all"]
    out = tmp_path / "calibrated"
    summary = volseg.predict([dataset_root(tiny_model) / "imagesTr"], out, tiny_model, progress=False, tta=False,
                             calibrated=True, calibration_file=str(cal_file), save_probabilities=True)
    assert summary["calibration"]["risk"] == "voxel_fnr" and "conformal risk control" in \
        summary["calibration"]["guarantee"]
    for case in ("case_000", "case_001"):
        labels, _ = read_image(out / f"{case}.nii.gz")
        p = np.load(out / "maps" / f"{case}_probabilities.npz")["probabilities"].astype(np.float32)
        np.testing.assert_array_equal(labels > 0, 1.0 - p[0] > np.float32(t))
        plain, _ = read_image(pred / f"{case}.nii.gz")
        possible, _ = read_image(out / "maps" / f"{case}_possible.nii.gz")
        np.testing.assert_array_equal(possible > 0, (labels > 0) & (plain == 0))
    _plain_and_calibrated_from_one_prediction(tiny_model, cal_file, out, tmp_path, capsys)


def _plain_and_calibrated_from_one_prediction(model, cal_file, calibrated, tmp_path, capsys):
    """``predict --calibrated-out``: the plain outputs as a plain prediction writes them, the
    calibrated ones as ``--calibrated`` does, each folder with its summary; ``--resume`` redoes
    a case missing from either folder."""
    from volseg.io.nifti import read_image
    from volseg.model import dataset_root

    images = dataset_root(model) / "imagesTr"
    plain, both, both_cal = tmp_path / "plain", tmp_path / "both", tmp_path / "both_cal"
    common = ["-m", str(model), "--no-tta", "--no-progress", "--save-probabilities"]
    assert main(["predict", "-i", str(images), "-o", str(plain), *common]) == 0
    capsys.readouterr()
    assert main(["predict", "-i", str(images), "-o", str(both), "--calibrated-out", str(both_cal),
                 "--calibration", str(cal_file), *common]) == 0
    printed = capsys.readouterr().out
    assert f"calibrated outputs → {both_cal}" in printed and "conformal risk control" in printed
    for a, b in ((both, plain), (both_cal, calibrated)):
        assert sorted(p.relative_to(a) for p in a.rglob("*.nii.gz")) == sorted(p.relative_to(b) for p in b.rglob("*.nii.gz"))
        for f in a.rglob("*.nii.gz"):
            np.testing.assert_array_equal(read_image(f)[0], read_image(b / f.relative_to(a))[0])
        np.testing.assert_array_equal(np.load(a / "maps" / "case_000_probabilities.npz")["probabilities"],
                                      np.load(b / "maps" / "case_000_probabilities.npz")["probabilities"])
    summaries = [json.loads((d / "summary.json").read_text()) for d in (both, both_cal)]
    assert "calibration" not in summaries[0] and summaries[1]["calibration"]["risk"] == "voxel_fnr"
    assert summaries[0]["cases"].keys() == summaries[1]["cases"].keys()
    (both_cal / "case_001.nii.gz").unlink()
    assert main(["predict", "-i", str(images), "-o", str(both), "--calibrated-out", str(both_cal),
                 "--calibration", str(cal_file), "--resume", *common]) == 0
    statuses = json.loads((both_cal / "summary.json").read_text())["cases"]
    assert statuses["case_001"]["status"] == "done" and statuses["case_000"]["status"] == "skipped"
    assert (both_cal / "case_001.nii.gz").is_file()
    for bad in (["--calibrated"], ["-o", str(both)]):  # one of the two flags; not the same folder
        rc = main(["predict", "-i", str(images), "-o", str(tmp_path / "x"), "--calibrated-out", str(both), *common,
                   *bad])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and "\n" not in err and ("give one of the two" in err or "plain predictions" in err)


def test_calibrate_command_errors_are_one_line(tiny_model, predicted, tmp_path, capsys):
    pred, ref = predicted
    base = ["calibrate", str(tiny_model), "--risk", "lesion_fnr", "--predictions", str(pred), "--references", str(ref)]
    for alpha, words in (("1.5", "alpha must be in (0, 1)"), ("0.05", "at least 19")):
        assert main([*base, "--alpha", alpha, "-o", str(tmp_path / "c.json")]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and "\n" not in err and "Traceback" not in err
    for extra, words in ((["--by", "size", "--size-edges", "100", "10"], "strictly increasing"),
                         (["--size-edges", "10"], "needs --by size"), (["--method", "crc", "--delta", "0.1"],
                                                                       "takes no delta")):
        assert main([*base, "--alpha", "0.5", *extra]) == 2
        assert words in capsys.readouterr().err
    empty = tmp_path / "no_probs"
    empty.mkdir()
    assert main(["calibrate", str(tiny_model), "--risk", "lesion_fnr", "--alpha", "0.5", "--predictions", str(empty),
                 "--references", str(ref)]) == 2
    assert "CASE_probabilities.npz" in capsys.readouterr().err
    assert main(["calibrate", str(tiny_model), "--risk", "box_fnr", "--alpha", "0.5"]) == 2
    assert "needs a boxes model" in capsys.readouterr().err
    assert main(["predict", "-i", str(tmp_path), "-o", str(tmp_path / "o"), "-m", str(tiny_model),
                 "--calibrated"]) == 2
    assert "run volseg calibrate" in capsys.readouterr().err
