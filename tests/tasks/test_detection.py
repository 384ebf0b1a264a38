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


def test_matcher_and_sampler_settings_have_one_source():
    """The plan's sampler (positive share of the sampled anchors, not foreground oversampling)
    and matcher are the defaults of volseg.detection.matching, which the classes also use."""
    import inspect

    from volseg.detection import matching
    from volseg.tasks.detection import detection_defaults

    det = detection_defaults({"levels": [{"stride": [1, 2, 2], "shapes": [[2.0, 4.0, 4.0]]}], "mean_best_iou": 0.9,
                              "num_boxes": 3})
    assert det["sampler"] == {"batch_size_per_image": matching.BATCH_SIZE_PER_IMAGE,
                              "positive_fraction": matching.POSITIVE_FRACTION,
                              "min_neg": matching.MIN_NEGATIVES, "pool_size": matching.POOL_SIZE}
    assert det["matcher"] == {"num_candidates": matching.NUM_CANDIDATES}
    sampler = inspect.signature(matching.HardNegativeSampler).parameters
    assert {k: sampler[k].default for k in det["sampler"]} == det["sampler"]
    assert inspect.signature(matching.AnchorMatcher).parameters["num_candidates"].default == matching.NUM_CANDIDATES


def test_plan_holds_anchors_levels_and_a_retina_unet(lung_plan):
    plans = load_plans(lung_plan / "plan" / "plans.json")
    assert plans["task"] == "detection"
    cfg = plans["configurations"]["3d_cpu"]
    net, det = cfg["network"], cfg["detection"]
    assert net["architecture"] == "retina_unet" and net["num_anchors"] == 3
    assert len(det["anchors"]["levels"]) == len(net["detection_levels"])
    assert 0.3 < det["anchors"]["mean_best_iou"] <= 1.0
    assert cfg["training"]["loss"]["ignore_label"] == -1
    # light heads on the CPU only; the GPU configuration keeps two tower convs of at least 32 channels
    assert (net["head_channels"], net["head_convs"]) == (16, 1)
    full = plans["configurations"]["3d_fullres"]["network"]
    assert full["head_convs"] == 2 and full["head_channels"] >= 32


def test_patch_and_batch_are_sized_with_the_heads(lung_plan):
    """The planner's estimates count the heads the configuration ends up with: the recorded
    compute and memory are those of the final retina_unet, within the budget."""
    from volseg.planning.memory import estimate_gflop, estimate_memory_gb, head_flop

    cfg = load_plans(lung_plan / "plan" / "plans.json")["configurations"]["3d_cpu"]
    net, patch, batch = cfg["network"], cfg["patch_size"], cfg["batch_size"]
    assert head_flop(net, patch, 2) > 0
    assert cfg["gflop_per_iteration"] == pytest.approx(estimate_gflop(net, patch, batch, 1, 2), abs=0.01)
    assert cfg["gflop_per_iteration"] <= 5.0     # the fixture's cpu_gflop
    assert cfg["memory_estimate_gb"] == pytest.approx(estimate_memory_gb(net, patch, batch, 1, 2, "cpu"), abs=0.001)


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
    sweep = json.loads((tmp_path / "model" / "detection_sweep.json").read_text())
    # the held-out cases recorded their candidates, and the sweep replayed the IoU grid on them
    held_out = sorted(p.name[:-len("_boxes.json")] for p in (fold / "validation").glob("*_boxes.json"))
    assert held_out and all((fold / "validation" / f"{c}_candidates.npz").is_file() for c in held_out)
    inf = load_plans(lung_plan / "plan" / "plans.json")["configurations"]["3d_cpu"]["detection"]["inference"]
    assert sweep["predicted_with"] == {"nms_iou": inf["nms_iou"], "wbc_iou": inf["wbc_iou"]}
    assert sweep["nms_iou"] in sweep["grid"]["nms_iou"] and sweep["wbc_iou"] in sweep["grid"]["wbc_iou"]
    # one threshold at a time: every NMS IoU at the plan's WBC IoU, then every WBC IoU at the best NMS IoU
    tried = [(row["nms_iou"], row["wbc_iou"]) for row in sweep["table"]]
    nms_stage = [(n, inf["wbc_iou"]) for n in sweep["grid"]["nms_iou"]]
    assert tried[:3] == nms_stage and len(tried) == 3 + len(sweep["grid"]["wbc_iou"]) - 1
    assert all(n == sweep["nms_iou"] for n, _ in tried[3:])
    assert sweep["cpm"] == max(row["cpm"] for row in sweep["table"])

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
    _box_calibration_round_trip(lung_plan, tmp_path / "model", tmp_path)


def _box_calibration_round_trip(lung_plan, model, tmp_path):
    """Box FNR calibrated on candidates against annotations; predict keeps exactly the boxes scoring >= λ̂."""
    import volseg

    pred, ref = tmp_path / "cal_pred", tmp_path / "cal_ref"
    pred.mkdir(), ref.mkdir()
    scores = [0.05 * (i + 1) for i in range(19)]  # scan i's nodule is hit by a box of score 0.05 (i + 1)
    (pred / "candidates.csv").write_text("seriesuid,coordX,coordY,coordZ,probability\n" + "".join(
        f"s{i},0,0,0,{p}\ns{i},50,50,50,0.9\n" for i, p in enumerate(scores)))
    (ref / "annotations.csv").write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n" + "".join(
        f"s{i},1,0,0,10\n" for i in range(len(scores))))
    cal = volseg.calibrate(model, "box_fnr", 0.2, predictions=pred, references=ref)
    # missed at t: scans with score < t; (missed + 1) / 20 <= 0.2 allows 3 misses: the largest t is 0.20
    assert cal["thresholds"]["all"] == pytest.approx(0.20) and cal["n"] == 19
    assert cal["calibration_cases"]["fp_per_case"] == 1.0
    out = tmp_path / "calibrated"
    volseg.predict([lung_plan / "data" / "imagesTs"], out, model, progress=False, calibrated=True,
                   calibration_file=str(model / "calibration.json"))
    boxes = json.loads((out / "lung_004_boxes.json").read_text())["boxes"]
    assert all(b["score"] >= 0.20 for b in boxes)
    _plain_and_calibrated_from_one_prediction(lung_plan, model, tmp_path)


def _plain_and_calibrated_from_one_prediction(lung_plan, model, tmp_path):
    """With a sweep whose IoUs differ from the plan's, --calibrated-out fuses the recorded tile
    boxes again: both folders hold exactly what two separate predictions write."""
    import volseg

    inf = load_plans(lung_plan / "plan" / "plans.json")["configurations"]["3d_cpu"]["detection"]["inference"]
    sweep_file = model / "detection_sweep.json"
    sweep = json.loads(sweep_file.read_text())
    sweep.update(nms_iou=0.3 if inf["nms_iou"] != 0.3 else 0.2, wbc_iou=0.5 if inf["wbc_iou"] != 0.5 else 0.4,
                 score_threshold=0.0, min_size_mm=0.0)
    sweep_file.write_text(json.dumps(sweep))
    images = [lung_plan / "data" / "imagesTs"]

    def boxes(folder):
        return [(b["box_voxel"], b["score"]) for b in json.loads((folder / "lung_004_boxes.json").read_text())["boxes"]]

    volseg.predict(images, tmp_path / "plain", model, progress=False)
    scores = sorted(s for _, s in boxes(tmp_path / "plain"))
    cal_file = tmp_path / "low.json"  # a threshold that keeps about half of the boxes
    cal_file.write_text(json.dumps({**json.loads((model / "calibration.json").read_text()),
                                    "thresholds": {"all": scores[len(scores) // 2]}}))
    volseg.predict(images, tmp_path / "calibrated", model, progress=False, calibration_file=str(cal_file))
    summary = volseg.predict(images, tmp_path / "both", model, progress=False, calibrated_out=str(tmp_path / "both_cal"),
                             calibration_file=str(cal_file))
    assert summary["calibrated_out"] == str(tmp_path / "both_cal") and "calibration" not in summary
    assert json.loads((tmp_path / "both_cal" / "summary.json").read_text())["calibration"]["risk"] == "box_fnr"
    assert boxes(tmp_path / "calibrated") != boxes(tmp_path / "plain")[:len(boxes(tmp_path / "calibrated"))]
    for a, b in (("both", "plain"), ("both_cal", "calibrated")):
        assert boxes(tmp_path / a) == boxes(tmp_path / b) and boxes(tmp_path / a)
        assert (tmp_path / a / "candidates.csv").read_text() == (tmp_path / b / "candidates.csv").read_text()
    assert not list((tmp_path / "both").glob("*_candidates.npz"))  # recorded for the second fusion only


def test_aggregator_takes_the_swept_ious_only_when_post_processing(lung_plan):
    """The sweep's NMS / WBC IoU in a plain prediction; the plan's for the held-out fold (no
    post-processing) and for --calibrated, whose threshold was calibrated on boxes fused with them."""
    from volseg.inference.predictor import PredictOptions
    from volseg.tasks import make_task

    plans = load_plans(lung_plan / "plan" / "plans.json")
    cfg = plans["configurations"]["3d_cpu"]
    task = make_task(plans)
    task.prepare(cfg)
    props = {"shape_after_resampling": [32, 64, 64], "shape_after_crop": [32, 64, 64]}
    cal = {"detection_sweep": {"nms_iou": 0.3, "wbc_iou": 0.4, "score_threshold": 0.1, "min_size_mm": 0.0}}
    inf = cfg["detection"]["inference"]
    cpu = torch.device("cpu")
    agg = task.aggregator(cfg, props, PredictOptions(), cpu, cal)
    assert (agg.nms_iou, agg.wbc_iou, agg.record) == (0.3, 0.4, False)
    for opts in (PredictOptions(postprocess=False), PredictOptions(calibrated=True), PredictOptions()):
        agg = task.aggregator(cfg, props, opts, cpu, cal if opts.postprocess is False or opts.calibrated else {})
        assert (agg.nms_iou, agg.wbc_iou) == (inf["nms_iou"], inf["wbc_iou"])
    assert task.aggregator(cfg, props, PredictOptions(**task.validation_options()), cpu, cal).record
    # both outputs from one prediction: the sweep's IoUs, the tile boxes recorded to fuse again with the plan's
    agg = task.aggregator(cfg, props, PredictOptions(calibrated_out="cal"), cpu, cal)
    assert (agg.nms_iou, agg.wbc_iou, agg.record) == (0.3, 0.4, True)
    same = {"detection_sweep": {**cal["detection_sweep"], "nms_iou": inf["nms_iou"], "wbc_iou": inf["wbc_iou"]}}
    assert not task.aggregator(cfg, props, PredictOptions(calibrated_out="cal"), cpu, same).record
    assert (agg.peak_window, agg.top_k) == (inf["peak_window"], inf["top_k_per_tile"]) == (3, 100)
    del inf["peak_window"], inf["top_k_per_tile"]           # a plan written before the two keys
    agg = task.aggregator(cfg, props, PredictOptions(), cpu, cal)
    assert (agg.peak_window, agg.top_k) == (1, 1000)
