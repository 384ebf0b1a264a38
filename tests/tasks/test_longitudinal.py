"""The longitudinal task: plan, consistency term, one train and one predict step, lesion tables."""

import csv
import json

import numpy as np
import pytest
import torch

from volseg.planning.plans import load_plans, save_plans
from volseg.tasks.longitudinal import ConsistencyLoss, change_values, plan_outputs, timepoint_channels


def test_consistency_is_zero_on_consistent_targets_and_positive_otherwise():
    label = torch.tensor([0, 1, 2, 3]).view(1, 1, 4, 1, 1)
    regions = [[1, 3], [1, 2], [2], [3]]
    consistent = torch.cat([torch.isin(label, torch.tensor(r)) for r in regions], 1).float()
    loss = ConsistencyLoss()
    assert loss(consistent).item() == 0.0
    bad = consistent.clone()
    bad[0, 2, 1] = 1.0  # "new" on a stable voxel (inside the baseline lesions)
    assert loss(bad).item() > 0
    bad = consistent.clone()
    bad[0, 3, 0] = 1.0  # "vanishing" where there was no baseline lesion
    assert loss(bad).item() > 0


def test_outputs_and_channels_from_dataset_labels():
    out = plan_outputs({"background": 0, "stable": 1, "new": 2, "vanishing": 3})
    assert out["mode"] == "sigmoid" and list(out["regions"]) == ["baseline_lesions", "followup_lesions",
                                                                 "new_lesions", "vanishing_lesions"]
    assert out["regions"]["baseline_lesions"] == [1, 3] and out["regions"]["followup_lesions"] == [1, 2]
    assert change_values({"background": 0, "stable": 4, "new": 5, "vanishing": 6}) == (4, 5, 6)
    assert timepoint_channels({"0": "FLAIR", "1": "T1", "2": "FLAIR", "3": "T1"},
                              {"0": "bl", "1": "bl", "2": "fu", "3": "fu"}) == ([0, 1], [2, 3])
    from volseg.errors import VolsegError

    with pytest.raises(VolsegError, match="stable"):
        change_values({"background": 0, "lesion": 1})
    with pytest.raises(VolsegError, match="timepoints"):
        timepoint_channels({"0": "FLAIR", "1": "FLAIR"}, None)


@pytest.fixture(scope="module")
def ms_plan(tmp_path_factory):
    import volseg
    from volseg.demo import generate_ms_dataset

    root = tmp_path_factory.mktemp("long")
    data = generate_ms_dataset(root / "data", num_cases=4, num_test=1, seed=3, use_template=False)
    plans = volseg.plan(data, root / "plan", device="cpu", num_workers=1, progress=False, cpu_gflop=5.0)
    cfg = plans["configurations"]["3d_cpu"]
    cfg["training"].update(epochs=1, iterations_per_epoch=2, val_iterations=1, num_workers=0)
    cfg["inference"]["mirror_axes"] = []
    save_plans(plans, root / "plan" / "plans.json")
    return root


def test_plan_records_every_change_setting(ms_plan):
    plans = load_plans(ms_plan / "plan" / "plans.json")
    assert plans["task"] == "longitudinal" and plans["outputs"]["num_outputs"] == 4
    s = plans["configurations"]["3d_cpu"]["longitudinal"]
    assert s["baseline_channels"] == [0] and s["followup_channels"] == [1]
    assert {"timepoint_swap", "lesion_paste", "misregistration"} <= set(s["augmentation"])
    assert s["fusion"] in ("difference", "siamese", "concat") and s["consistency_weight"] > 0


@pytest.mark.parametrize("fusion", ["difference", "siamese"])
def test_train_and_predict_write_labels_and_lesion_tables(ms_plan, tmp_path, fusion):
    import volseg
    from volseg.io.nifti import read_image

    plan_dir = tmp_path / "plan"
    plans = load_plans(ms_plan / "plan" / "plans.json")
    plans["configurations"]["3d_cpu"]["longitudinal"]["fusion"] = fusion
    plan_dir.mkdir()
    save_plans(plans, plan_dir / "plans.json")
    for name in ("fingerprint.json", "dataset.json", "splits.json"):
        if (ms_plan / "plan" / name).exists():
            (plan_dir / name).write_bytes((ms_plan / "plan" / name).read_bytes())
    (plan_dir / "preprocessed").symlink_to(ms_plan / "plan" / "preprocessed")
    fold = volseg.train(plan_dir, tmp_path / "model", fold=0, progress=False)
    record = json.loads((fold / "log.jsonl").read_text().splitlines()[0])
    assert "consistency" in record["loss_terms"] and len(record["loss_terms"]) == 2
    assert all(np.isfinite(v) for v in record["loss_terms"].values())
    assert (fold / "validation" / "maps").is_dir()  # probabilities kept to fit the matching on
    matching = json.loads((tmp_path / "model" / "lesion_matching.json").read_text())
    assert {"threshold", "min_volume_mm3", "min_match"} <= set(matching)

    out = tmp_path / "pred"
    volseg.predict([ms_plan / "data" / "imagesTs"], out, tmp_path / "model", progress=False)
    labels, _ = read_image(out / "ms_004.nii.gz")
    assert set(np.unique(labels)) <= {0, 1, 2, 3}
    rows = list(csv.DictReader(open(out / "ms_004_lesions.csv")))
    assert all(r["type"] in ("stable", "new", "vanishing") for r in rows)
    for r in rows:
        value = {"stable": 1, "new": 2, "vanishing": 3}[r["type"]]
        assert (labels == value).any()
    if fusion == "difference":
        _calibrated_round_trip(ms_plan, tmp_path / "model", tmp_path)


def _calibrated_round_trip(ms_plan, model, tmp_path):
    """Calibrated on the held-out fold, the lesions are exactly the voxels whose largest map is above λ̂."""
    import volseg
    from volseg.io.nifti import read_image

    cal = volseg.calibrate(model, "lesion_fnr", 0.5)
    assert cal["n"] >= 1 and (model / "calibration.json").is_file()
    out = tmp_path / "calibrated"
    summary = volseg.predict([ms_plan / "data" / "imagesTs"], out, model, progress=False, calibrated=True,
                             save_probabilities=True)
    assert summary["calibration"]["alpha"] == 0.5
    labels, _ = read_image(out / "ms_004.nii.gz")
    p = np.load(out / "maps" / "ms_004_probabilities.npz")["probabilities"].astype(np.float32)
    np.testing.assert_array_equal(labels > 0, p.max(axis=0) > np.float32(cal["thresholds"]["all"]))
    assert (out / "ms_004_lesions.csv").is_file() and (out / "maps" / "ms_004_possible.nii.gz").is_file()
    # both from one prediction: what the plain and the calibrated predictions write
    both, both_cal = tmp_path / "both", tmp_path / "both_cal"
    volseg.predict([ms_plan / "data" / "imagesTs"], both, model, progress=False, calibrated_out=str(both_cal),
                   save_probabilities=True)
    for a, b in ((both, tmp_path / "pred"), (both_cal, out)):
        np.testing.assert_array_equal(read_image(a / "ms_004.nii.gz")[0], read_image(b / "ms_004.nii.gz")[0])
        assert (a / "ms_004_lesions.csv").read_text() == (b / "ms_004_lesions.csv").read_text()
    np.testing.assert_array_equal(read_image(both_cal / "maps" / "ms_004_possible.nii.gz")[0],
                                  read_image(out / "maps" / "ms_004_possible.nii.gz")[0])
    assert not (both / "maps" / "ms_004_possible.nii.gz").exists()


def test_sigmoid_heads_start_at_the_plan_prior():
    from volseg.networks.longitudinal import DifferenceInput
    from volseg.networks.unet import UNet
    from volseg.tasks.longitudinal import set_output_prior

    net = DifferenceInput(UNet(in_channels=3, num_outputs=4, features_per_stage=[4, 8], kernel_sizes=[[3, 3, 3]] * 2,
                               strides=[[1, 1, 1], [2, 2, 2]], n_conv_per_stage=[1, 1], n_conv_per_stage_decoder=[1]),
                          [0], [1])
    set_output_prior(net, 0.01)
    for layer in net.net.decoder.seg_layers:
        torch.testing.assert_close(torch.sigmoid(layer.bias), torch.full_like(layer.bias, 0.01))
