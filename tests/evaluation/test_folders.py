"""evaluate_folders: pairing, bad inputs, the written report."""

import csv
import json

import numpy as np
import pytest

from volseg.errors import VolsegError
from volseg.evaluation import LesionConfig, evaluate_case, evaluate_folders
from volseg.io.nifti import Geometry, read_image, write_image


def _summary(out):
    return json.loads((out / "summary.json").read_text())


def test_report_matches_evaluate_case_and_is_written(folders):
    out = folders / "out"
    summary = evaluate_folders(folders / "pred", folders / "ref", out, dataset_dir=folders / "ds",
                               regions={"extra": (2,)}, num_workers=1, worst=1)
    written = _summary(out)
    assert written["counts"] == {"evaluated": 3, "failed": 0, "missing_predictions": 0, "missing_references": 0}
    assert list(written["labels"]) == ["organ", "tumour", "all", "extra"]
    pred, g = read_image(folders / "pred" / "c1.nii.gz")
    ref, _ = read_image(folders / "ref" / "c1.nii.gz")
    direct = evaluate_case(pred, ref, g.spacing, {"organ": 1, "all": (1, 2)})
    case = next(c for c in written["cases"] if c["case"] == "c1")
    assert case["metrics"]["all"]["dice"] == pytest.approx(direct["all"]["dice"])
    assert case["metrics"]["organ"]["hd95_mm"] == pytest.approx(direct["organ"]["hd95_mm"])
    dices = [c["metrics"]["organ"]["dice"] for c in written["cases"]]
    assert written["labels"]["organ"]["mean"]["dice"] == pytest.approx(np.mean(dices))
    assert summary["labels"]["organ"]["stats"]["dice"]["n"] == 3
    rows = list(csv.DictReader((out / "cases.csv").open()))
    assert len(rows) == 3 * 4 and {r["label"] for r in rows} == {"organ", "tumour", "all", "extra"}
    assert (out / "plots" / "scores.png").stat().st_size > 1000
    assert len(list((out / "plots" / "worst").glob("*.png"))) == 4  # one per label and region
    assert not list(out.rglob(".*tmp*"))  # atomic writes leave no temporaries


def test_missing_and_failed_cases_are_reported_not_dropped(folders, geom):
    (folders / "pred" / "c0.nii.gz").unlink()
    lab, _ = read_image(folders / "ref" / "c1.nii.gz")
    write_image(folders / "pred" / "lonely.nii", lab, geom)
    moved = Geometry(geom.shape, geom.spacing, (9.0, 2.0, 3.0))
    write_image(folders / "pred" / "c1.nii.gz", lab, moved)
    bad = lab.copy()
    bad[0, 0, 0] = 7
    write_image(folders / "pred" / "c2.nii.gz", bad, geom)
    summary = evaluate_folders(folders / "pred", folders / "ref", folders / "out", dataset_dir=folders / "ds",
                               num_workers=2, plots=False)
    assert summary["missing"] == {"predictions": ["c0"], "references": ["lonely"]}
    errors = {f["case"]: f["error"] for f in summary["failed"]}
    assert set(errors) == {"c1", "c2"}
    assert "c1.nii.gz" in errors["c1"] and "origin" in errors["c1"] and "\n" not in errors["c1"]
    assert "c2.nii.gz" in errors["c2"] and "label value(s) 7 not declared" in errors["c2"]
    written = _summary(folders / "out")
    assert written["counts"] == {"evaluated": 0, "failed": 2, "missing_predictions": 1, "missing_references": 1}
    # c0 has no prediction: it is scored as an empty one, so Dice 0 and HD95 undefined
    assert written["labels"]["organ"]["mean"]["dice"] == 0.0
    assert written["labels"]["organ"]["mean"]["hd95_mm"] is None  # NaN is written as null
    assert written["labels"]["organ"]["counts"]["missing_predictions"] == 1
    rows = list(csv.DictReader((folders / "out" / "cases.csv").open()))
    assert [r["status"] for r in rows] == ["missing"] * 3 + ["failed", "failed"] and "not declared" in rows[4]["error"]


def test_without_dataset_labels_come_from_the_values_found(folders, geom):
    z = np.zeros(geom.shape, np.uint8)
    write_image(folders / "ref" / "c3.nii.gz", z, geom)
    spurious = z.copy()
    spurious[2:4, 2:4, 2:4] = 5
    write_image(folders / "pred" / "c3.nii.gz", spurious, geom)
    summary = evaluate_folders(folders / "pred", folders / "ref", folders / "out", regions={"any": (1, 2)},
                               lesion_wise=True, lesion_cfg=LesionConfig(min_volume_mm3=0.0), num_workers=1,
                               plots=False)
    assert list(summary["labels"]) == ["1", "2", "5", "any"]
    five = summary["labels"]["5"]
    assert five["counts"] == {"cases": 4, "both_empty": 3, "ref_empty_only": 1, "pred_empty_only": 0,
                              "missing_predictions": 0}
    assert five["stats"]["dice"]["n"] == 1 and five["stats"]["dice"]["n_undefined"] == 3
    fp = five["lesions"]["reference_empty_cases"]
    assert fp["cases"] == 4 and fp["cases_with_fp"] == 1 and fp["fp_lesions"] == 1
    assert fp["fp_volume_mm3"] == pytest.approx(8 * 2.5 * 0.8 * 0.7, rel=1e-5)
    any_ = summary["labels"]["any"]
    assert any_["lesions"]["reference_empty_cases"]["cases"] == 1  # only c3 has no lesion of 1 or 2


def test_longitudinal_dataset_turns_lesion_metrics_on(folders):
    ds = folders / "ds" / "dataset.json"
    ds.write_text(json.dumps({"labels": {"background": 0, "stable": 1, "new": 2, "followup": [1, 2]},
                              "task": "longitudinal"}))
    summary = evaluate_folders(folders / "pred", folders / "ref", folders / "out", dataset_dir=folders / "ds",
                               num_workers=1, plots=False)
    assert summary["settings"]["lesion_wise"]["min_overlap"] == 0.1
    assert summary["labels"]["followup"]["lesions"]["pooled"]["n_ref"] >= 3
    header = (folders / "out" / "cases.csv").read_text().splitlines()[0]
    assert "lesion_sensitivity" in header


def test_folder_level_errors(folders):
    with pytest.raises(VolsegError, match="folder not found"):
        evaluate_folders(folders / "nope", folders / "ref", folders / "out")
    with pytest.raises(VolsegError, match="not declared"):
        evaluate_folders(folders / "pred", folders / "ref", folders / "out", dataset_dir=folders / "ds",
                         regions={"x": (1, 9)})
    (folders / "ref" / "c0.nii").write_bytes(b"")
    with pytest.raises(VolsegError, match="exists twice"):
        evaluate_folders(folders / "pred", folders / "ref", folders / "out")


def test_float_label_maps_and_nii_endings(folders, geom):
    lab, _ = read_image(folders / "ref" / "c0.nii.gz")
    (folders / "pred" / "c0.nii.gz").unlink()
    write_image(folders / "pred" / "c0.nii", lab.astype(np.float32), geom)  # integral floats are fine
    half = lab.astype(np.float32)
    half[0, 0, 0] = 0.5
    write_image(folders / "pred" / "c1.nii.gz", half, geom)
    summary = evaluate_folders(folders / "pred", folders / "ref", folders / "out", num_workers=1, plots=False)
    c0 = next(c for c in summary["cases"] if c["case"] == "c0")
    assert c0["status"] == "ok" and c0["metrics"]["1"]["dice"] == 1.0
    assert [f["case"] for f in summary["failed"]] == ["c1"]
    assert "c1.nii.gz" in summary["failed"][0]["error"] and "non-integer" in summary["failed"][0]["error"]


def test_overlays_show_the_image_underneath(folders, geom):
    for i in range(3):
        write_image(folders / "images" / f"c{i}_0000.nii.gz", np.random.default_rng(i).random(geom.shape), geom)
    evaluate_folders(folders / "pred", folders / "ref", folders / "out", dataset_dir=folders / "ds",
                     num_workers=1, worst=2, images_dir=folders / "images")
    assert len(list((folders / "out" / "plots" / "worst").glob("organ__c*.png"))) == 2


def test_missing_predictions_count_as_empty_in_the_means(tmp_path, geom):
    """Regression: with 2 of 6 predictions missing, the mean Dice was 1.000 over the 4 present."""
    lab = np.zeros(geom.shape, np.uint8)
    lab[4:10, 5:12, 6:14] = 1
    for i in range(6):
        write_image(tmp_path / "ref" / f"c{i}.nii.gz", lab, geom)
        if i not in (2, 5):
            write_image(tmp_path / "pred" / f"c{i}.nii.gz", lab, geom)  # perfect
    write_image(tmp_path / "ref" / "empty.nii.gz", np.zeros(geom.shape, np.uint8), geom)  # and no prediction
    summary = evaluate_folders(tmp_path / "pred", tmp_path / "ref", tmp_path / "out", num_workers=1, plots=False)
    one = summary["labels"]["1"]
    assert one["mean"]["dice"] == pytest.approx(4 / 6)
    assert one["stats"]["dice"]["n"] == 6 and one["stats"]["dice"]["n_undefined"] == 1  # empty vs empty: NaN
    assert one["counts"]["missing_predictions"] == 3 and one["counts"]["both_empty"] == 1
    assert one["counts"]["pred_empty_only"] == 2
    assert summary["counts"]["missing_predictions"] == 3 and summary["counts"]["evaluated"] == 4
    assert summary["missing"]["predictions"] == ["c2", "c5", "empty"]
    status = {c["case"]: c["status"] for c in summary["cases"]}
    assert status == {"c0": "ok", "c1": "ok", "c2": "missing", "c3": "ok", "c4": "ok", "c5": "missing",
                      "empty": "missing"}
    rows = {r["case"]: r for r in csv.DictReader((tmp_path / "out" / "cases.csv").open())}
    assert rows["c2"]["status"] == "missing" and rows["c2"]["dice"] == "0" and "no prediction" in rows["c2"]["error"]


def test_missing_prediction_with_unreadable_reference_fails(tmp_path, geom):
    write_image(tmp_path / "ref" / "a.nii.gz", np.ones(geom.shape, np.uint8), geom)
    write_image(tmp_path / "pred" / "a.nii.gz", np.ones(geom.shape, np.uint8), geom)
    (tmp_path / "ref" / "b.nii.gz").write_bytes(b"\x1f\x8b\x08garbage")
    summary = evaluate_folders(tmp_path / "pred", tmp_path / "ref", tmp_path / "out", num_workers=1, plots=False)
    assert summary["counts"] == {"evaluated": 1, "failed": 1, "missing_predictions": 1, "missing_references": 0}
    assert summary["failed"][0]["case"] == "b" and "b.nii.gz" in summary["failed"][0]["error"]
    assert summary["labels"]["1"]["mean"]["dice"] == 1.0
