"""Region (sigmoid) labels end to end: plan, train, predict, each through the plan's outputs."""

import json

import numpy as np

from synthetic import make_dataset

from volseg.io.nifti import read_image

REGIONS = {"background": 0, "whole": [1, 2], "core": [2]}


def test_region_dataset_plans_trains_and_predicts_label_values(tmp_path):
    from volseg.cli.main import main
    from volseg.planning.plans import load_plans, save_plans
    from volseg.planning.run import plan_and_preprocess
    from volseg.workflow import train_fold

    data = make_dataset(tmp_path / "Dataset011_Regions", n_cases=3, shape=(16, 32, 32), spacing=(1.0, 1.0, 1.0),
                        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), n_labels=2,
                        extra={"labels": REGIONS})
    plans = plan_and_preprocess(data, tmp_path / "plan", device="cpu", num_workers=1, progress=False, cpu_gflop=2.0)
    assert plans["outputs"] == {"mode": "sigmoid", "num_outputs": 2, "regions": {"whole": [1, 2], "core": [2]},
                                "regions_class_order": [1, 2]}
    cfg = plans["configurations"]["3d_cpu"]
    cfg["training"].update(epochs=2, iterations_per_epoch=2, val_iterations=1, num_workers=0)
    save_plans(plans, tmp_path / "plan" / "plans.json")
    fold_dir = train_fold(tmp_path / "plan", tmp_path / "model", fold=0, progress=False, validate=False)
    record = json.loads((fold_dir / "log.jsonl").read_text().splitlines()[-1])
    assert np.isfinite(record["train_loss"]) and record["train_loss"] > 0
    assert load_plans(tmp_path / "model" / "plans.json")["outputs"]["mode"] == "sigmoid"

    out = tmp_path / "pred"
    assert main(["predict", "-i", str(data / "imagesTr"), "-m", str(tmp_path / "model"), "-o", str(out), "-f", "0",
                 "--save-probabilities", "--no-tta", "--no-progress", "--device", "cpu"]) == 0
    label, geom = read_image(out / "case_000.nii.gz")
    ref, ref_geom = read_image(data / "labelsTr" / "case_000.nii.gz")
    assert label.shape == ref.shape and geom.spacing == ref_geom.spacing
    assert set(np.unique(label)) <= {0, 1, 2}  # regions painted back as label values
    with np.load(out / "maps" / "case_000_probabilities.npz") as z:
        probs = z[z.files[0]].astype(np.float32)
    assert probs.shape == (2, *label.shape) and probs.min() >= 0 and probs.max() <= 1  # one sigmoid per region
    # "whole" paints 1 and the nested "core" paints 2 over it (regression: both painted 2)
    want = np.where(probs[1] > 0.5, 2, np.where(probs[0] > 0.5, 1, 0))
    clear = (np.abs(probs - 0.5) > 2e-3).all(0)  # away from the threshold, where fp16 cannot decide
    assert (want[clear] == 1).any() and (want[clear] == 2).any()
    np.testing.assert_array_equal(label[clear], want[clear])
