"""MSSEG-2 summary numbers of lesion-wise labels: per-case means, lesion-free cases, count error."""

import csv
import json
import math

import numpy as np
import pytest

from volseg.evaluation import LesionConfig, evaluate_case, evaluate_folders
from volseg.evaluation.summary import summarize_label, summarize_lesions
from volseg.io.nifti import Geometry, write_image

GEOM = Geometry((12, 16, 16), (1.0, 1.0, 1.0))
ISO = (1.0, 1.0, 1.0)


def _cube(mask, z, y, x, size):
    mask[z:z + size, y:y + size, x:x + size] = 1
    return mask


def _cases():
    """Four (pred, ref) label maps; lesion counts under the default (anima) rule, 3 mm³ minimum.

    a: ref 2 lesions (27 voxels each), pred finds one exactly and adds a spurious 8-voxel one
       -> n_ref 2, n_pred 2, tp 1 / 1: S 0.5, P 0.5, F1 0.5, count error 0.
    b: ref empty, pred 2 lesions of 8 and 27 voxels -> S NaN, P 0, F1 0, fp volume 35, count error +2.
    c: both empty -> S, P, F1 NaN, count error 0.
    d: ref 1 lesion (27 voxels), pred empty -> S 0, P NaN, F1 0, count error -1.
    """
    z = np.zeros(GEOM.shape, np.uint8)
    a_ref = _cube(_cube(z.copy(), 1, 1, 1, 3), 7, 10, 10, 3)
    a_pred = _cube(_cube(z.copy(), 1, 1, 1, 3), 1, 10, 1, 2)
    b_pred = _cube(_cube(z.copy(), 1, 1, 1, 2), 6, 6, 6, 3)
    d_ref = _cube(z.copy(), 4, 4, 4, 3)
    return {"a": (a_pred, a_ref), "b": (b_pred, z.copy()), "c": (z.copy(), z.copy()), "d": (z.copy(), d_ref)}


def _check(lesions):
    assert lesions["per_case"] == {"f1": {"mean": pytest.approx((0.5 + 0 + 0) / 3), "cases": 3},
                                   "sensitivity": {"mean": (0.5 + 0) / 2, "cases": 2},
                                   "precision": {"mean": (0.5 + 0) / 2, "cases": 2}}
    # lesion-free references: b (2 false positives, 8 + 27 mm³) and c (none)
    assert lesions["lesion_free"] == {"cases": 2, "nFP_mean": 1.0, "nFP_total": 2, "VFP_mean_mm3": 17.5}
    # count errors 0, +2, 0, -1
    assert lesions["count_error"] == {"mean": 0.25, "mean_abs": 0.75}
    assert (lesions["pooled"]["n_ref"], lesions["pooled"]["n_pred"], lesions["pooled"]["tp_ref"]) == (3, 4, 1)


def test_summary_numbers_from_arrays():
    per_case = [evaluate_case(p, r, ISO, {"lesion": 1}, lesion_cfg=LesionConfig())["lesion"]
                for p, r in _cases().values()]
    assert [c["lesions"]["count_error"] for c in per_case] == [0, 2, 0, -1]
    lesions = summarize_label(per_case)["lesions"]
    _check(lesions)
    assert lesions["mean_per_case"]["f1"] == pytest.approx(1 / 6)  # the older key still holds the same means


def test_lesion_free_fields_are_undefined_without_lesion_free_cases():
    cases = _cases()
    records = [evaluate_case(*cases[k], ISO, {"x": 1}, lesion_cfg=LesionConfig())["x"]["lesions"] for k in "ad"]
    lesions = summarize_lesions(records)
    free = lesions["lesion_free"]
    assert free["cases"] == 0 and all(math.isnan(free[k]) for k in ("nFP_mean", "nFP_total", "VFP_mean_mm3"))
    assert lesions["count_error"] == {"mean": -0.5, "mean_abs": 0.5}  # 0 and -1
    assert lesions["per_case"]["precision"] == {"mean": 0.5, "cases": 1}  # d has no predicted lesion


def test_summary_json_and_csv_from_folders(tmp_path):
    for name, (pred, ref) in _cases().items():
        write_image(tmp_path / "ref" / f"{name}.nii.gz", ref, GEOM)
        write_image(tmp_path / "pred" / f"{name}.nii.gz", pred, GEOM)
    evaluate_folders(tmp_path / "pred", tmp_path / "ref", tmp_path / "out", lesion_wise=True, num_workers=1,
                     plots=False)
    written = json.loads((tmp_path / "out" / "summary.json").read_text())  # valid JSON, NaN as null
    assert written["settings"]["lesion_wise"]["rule"] == "anima"
    _check(written["labels"]["1"]["lesions"])
    errors = {c["case"]: c["metrics"]["1"]["lesions"]["count_error"] for c in written["cases"]}
    assert errors == {"a": 0, "b": 2, "c": 0, "d": -1}
    rows = {r["case"]: r for r in csv.DictReader((tmp_path / "out" / "cases.csv").open())}
    assert {c: rows[c]["lesion_count_error"] for c in rows} == {"a": "0", "b": "2", "c": "0", "d": "-1"}
    assert rows["c"]["lesion_f1"] == ""  # NaN is an empty cell

    c_only = tmp_path / "c_only"
    for side in ("pred", "ref"):
        write_image(c_only / side / "a.nii.gz", _cases()["a"][0 if side == "pred" else 1], GEOM)
    evaluate_folders(c_only / "pred", c_only / "ref", c_only / "out", lesion_wise=True, num_workers=1, plots=False)
    free = json.loads((c_only / "out" / "summary.json").read_text())["labels"]["1"]["lesions"]["lesion_free"]
    assert free == {"cases": 0, "nFP_mean": None, "nFP_total": None, "VFP_mean_mm3": None}
