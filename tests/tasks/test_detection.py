"""The detection task end to end on a tiny lung demo: plan → train → predict → boxes, candidates, FROC."""

import csv
import json

import numpy as np
import pytest
import torch

from volseg.planning.plans import load_plans, save_plans


@pytest.fixture(scope="module")
def lung_plan(tmp_path_factory):
    import volseg
    from volseg.demo import generate_lung_dataset

    root = tmp_path_factory.mktemp("det")
    data = generate_lung_dataset(root / "data", num_cases=4, num_test=1, shape=(32, 64, 64), seed=6)  # every case has nodules
    plans = volseg.plan(data, root / "plan", device="cpu", num_workers=1, progress=False, cpu_gflop=5.0)
    cfg = plans["configurations"]["3d_cpu"]
    cfg["training"].update(epochs=1, iterations_per_epoch=2, val_iterations=1, num_workers=0)
    cfg["inference"]["mirror_axes"] = [2]
    save_plans(plans, root / "plan" / "plans.json")
    return root


def test_plan_holds_anchors_levels_and_a_retina_unet(lung_plan):
    plans = load_plans(lung_plan / "plan" / "plans.json")
    assert plans["task"] == "detection"
    cfg = plans["configurations"]["3d_cpu"]
    net, det = cfg["network"], cfg["detection"]
    assert net["architecture"] == "retina_unet" and net["num_anchors"] == 3
    assert len(det["anchors"]["levels"]) == len(net["detection_levels"])
    assert 0.3 < det["anchors"]["mean_best_iou"] <= 1.0
    assert cfg["training"]["loss"]["ignore_label"] == -1


def test_train_and_predict_write_boxes_candidates_and_froc(lung_plan, tmp_path):
    import volseg
    from volseg.io.nifti import read_geometry
    from volseg.io.world import box_to_world

    fold = volseg.train(lung_plan / "plan", tmp_path / "model", fold=0, progress=False)
    record = json.loads((fold / "log.jsonl").read_text().splitlines()[0])
    assert set(record["loss_terms"]) == {"seg", "cls", "box"}
    assert all(np.isfinite(v) for v in record["loss_terms"].values())
    summary = json.loads((fold / "validation" / "evaluation" / "summary.json").read_text())
    assert "cpm" in summary and (fold / "validation" / "reference" / "annotations.csv").is_file()
    assert (tmp_path / "model" / "detection_sweep.json").is_file()

    out = tmp_path / "pred"
    volseg.predict([lung_plan / "data" / "imagesTs"], out, tmp_path / "model", progress=False)
    boxes = json.loads((out / "lung_004_boxes.json").read_text())
    assert (out / "lung_004.nii.gz").is_file()
    rows = list(csv.DictReader(open(out / "candidates.csv")))
    assert list(rows[0]) == ["seriesuid", "coordX", "coordY", "coordZ", "probability"] if rows else True
    assert len(rows) == len(boxes["boxes"]) <= 100
    geometry = read_geometry(lung_plan / "data" / "imagesTs" / "lung_004_0000.nii.gz")
    for b in boxes["boxes"][:5]:
        centre, _ = box_to_world(np.asarray([b["box_voxel"]], float), geometry)
        np.testing.assert_allclose(centre[0], b["centre_world_mm"], atol=1e-6)
        assert 0.0 <= b["score"] <= 1.0


def test_detection_batch_counts_and_best_f1():
    from volseg.detection.training import best_f1, detection_counts

    gt = [torch.tensor([[0.0, 0.0, 0.0, 4.0, 4.0, 4.0], [10.0, 10.0, 10.0, 14.0, 14.0, 14.0]])]
    pred = [(torch.tensor([[0.0, 0.0, 0.0, 4.0, 4.0, 4.0], [20.0, 20.0, 20.0, 22.0, 22.0, 22.0]]),
             torch.tensor([0.9, 0.35]))]
    counts = detection_counts(pred, gt, thresholds=(0.3, 0.5))
    # at 0.3: one hit, one false positive, one miss; at 0.5: one hit, one miss
    assert counts.tolist() == [[1, 1, 1], [1, 0, 1]]
    score, extra = best_f1(counts, (0.3, 0.5))
    assert score == pytest.approx(2 / 3) and extra["best_threshold"] == 0.5
    assert np.isnan(best_f1(torch.zeros(2, 3), (0.3, 0.5))[0])


def test_box_rules_keep_scores_and_sizes():
    from volseg.detection.sweep import apply_box_rules

    boxes = {"boxes": np.array([[0, 0, 0, 2, 2, 2], [0, 0, 0, 8, 8, 8]], float), "scores": np.array([0.9, 0.2]),
             "classes": np.array([0, 0])}
    kept = apply_box_rules(boxes, {"score_threshold": 0.1, "min_size_mm": 3.0}, (1.0, 1.0, 1.0))
    assert kept["scores"].tolist() == [0.2]
    kept = apply_box_rules(boxes, {"score_threshold": 0.5, "min_size_mm": 0.0}, (2.0, 2.0, 2.0))
    assert kept["scores"].tolist() == [0.9]


def test_reference_findings_from_an_instance_map():
    from volseg.detection.reference import instance_findings
    from volseg.io.nifti import Geometry

    inst = np.zeros((10, 12, 14), np.int16)
    inst[2:6, 3:7, 4:8] = 1  # a 4-voxel cube: centre index (3.5, 4.5, 5.5)
    geometry = Geometry((10, 12, 14), (2.0, 1.0, 1.0), (10.0, 20.0, 30.0))  # spacing z, y, x; origin x, y, z
    (x, y, z, d), = instance_findings(inst, geometry, [1, 2])
    assert (x, y, z) == pytest.approx((10 + 5.5, 20 + 4.5, 30 + 2 * 3.5))
    assert d == pytest.approx((6 * 4 * 4 * 4 * 2.0 / np.pi) ** (1 / 3))
