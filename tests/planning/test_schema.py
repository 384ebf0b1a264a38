"""The plan schema: every key the code reads is listed, any other key is refused by name,
and every plan the planner writes (each task, CPU and GPU) validates."""

import copy
import json

import pytest
from synthetic import make_dataset

from volseg.errors import PlanError
from volseg.planning.plans import load_plans, validate_plans
from volseg.planning.run import plan_and_preprocess


def _plan(data, out, device="cpu", **kw):
    return plan_and_preprocess(data, out, device=device, num_workers=1, progress=False, preprocess=False,
                               cpu_gflop=5.0, **kw)


@pytest.fixture(scope="module")
def plans_by_task(tmp_path_factory):
    """Plans of a segmentation (softmax and region), a detection and a longitudinal dataset."""
    from volseg.demo import generate_lung_dataset, generate_ms_dataset

    root = tmp_path_factory.mktemp("schema")
    data = {
        "segmentation": make_dataset(root / "seg", n_cases=3, channels=("CT",), n_labels=2),
        "regions": make_dataset(root / "reg", n_cases=3, channels=("MR", "T2"), n_labels=2,
                                extra={"labels": {"background": 0, "whole": [1, 2], "core": [2]}}),
        "detection": generate_lung_dataset(root / "lung", num_cases=4, num_test=0, shape=(32, 64, 64), seed=6),
        "longitudinal": generate_ms_dataset(root / "ms", num_cases=4, num_test=0, seed=3, use_template=False),
    }
    return {(name, device): _plan(path, root / f"{name}_{device}", device=device)
            for name, path in data.items() for device in ("cpu", "cuda")}


def _edited(plans, config="3d_cpu"):
    plans = copy.deepcopy(plans)
    return plans, plans["configurations"][config]


def test_every_planned_plan_validates(plans_by_task):
    for (name, device), plans in plans_by_task.items():
        validate_plans(plans, f"{name}_{device}/plans.json")
        want = {"segmentation": "segmentation", "regions": "segmentation"}.get(name, name)
        assert plans["task"] == want, name
        assert plans["default_configuration"] == ("3d_cpu" if device == "cpu" else "3d_fullres")


def test_a_gpu_configuration_predicts_one_tile_at_a_time_on_the_cpu(plans_by_task):
    """GPU configurations batch tiles on the GPU and take one at a time on the CPU; CPU ones keep their batch."""
    from volseg.planning.planner import CPU_TILE_BATCH

    for (name, _), plans in plans_by_task.items():
        for config in plans["configurations"].values():
            inf = config["inference"]
            assert inf["tile_batch"] == config["batch_size"], name
            assert inf["tile_batch_cpu"] == (config["batch_size"] if config["device"] == "cpu" else CPU_TILE_BATCH), name


def test_a_lowres_configuration_validates(tmp_path):
    data = make_dataset(tmp_path / "big", n_cases=2, shape=(96, 128, 128), spacing=(1.0, 1.0, 1.0))
    plans = _plan(data, tmp_path / "plan", device="cuda", memory_gb=2.0)
    assert "next_stage" not in plans["configurations"]["3d_lowres"]  # a configuration of its own, no cascade
    validate_plans(plans, "plans.json")


@pytest.mark.parametrize("task, where, key, typo", [
    ("segmentation", ["augmentation"], "rotation", "rotaton"),
    ("segmentation", ["augmentation", "gamma"], "retain_stats", "retain_stat"),
    ("segmentation", ["training", "loss"], "weight_dice", "weight_dcie"),
    ("segmentation", ["training", "loss"], "deep_supervision_weights", "deep_supervison_weights"),
    ("segmentation", ["training", "optimizer"], "momentum", "momentun"),
    ("segmentation", ["training"], "foreground_oversampling", "foreground_oversampeling"),
    ("segmentation", ["training", "lr_schedule"], "exponent", "exponant"),
    ("segmentation", ["inference"], "tile_batch", "tile_batches"),
    ("segmentation", ["network"], "deep_supervision", "deep_supervison"),
    ("detection", ["detection", "sampler"], "positive_fraction", "positive_fracton"),
    ("detection", ["detection", "loss"], "seg_weight", "seg_wieght"),
    ("detection", ["training", "optimizer"], "weight_decay", "weight_decy"),
    ("longitudinal", ["longitudinal", "augmentation", "lesion_paste"], "p_new", "p_nwe"),
    ("longitudinal", ["longitudinal", "matching"], "min_match", "min_macth"),
])
def test_a_misspelt_key_is_named_in_a_one_line_error(plans_by_task, task, where, key, typo):
    plans, cfg = _edited(plans_by_task[(task, "cpu")])
    section = cfg
    for name in where:
        section = section[name]
    section[typo] = section.pop(key) if key in section else 1.0  # an optional key the plan leaves out
    path = "/".join(["configurations", "3d_cpu", *where, typo])
    with pytest.raises(PlanError) as e:
        validate_plans(plans, "plans.json")
    message = str(e.value)
    assert message.startswith(f"plans.json: invalid plan at {path}: unknown key {typo!r} (did you mean {key!r}?)")
    assert "\n" not in message


def test_an_unknown_key_in_a_loaded_file_names_the_file(plans_by_task, tmp_path):
    plans, cfg = _edited(plans_by_task[("segmentation", "cpu")])
    cfg["augmentation"]["rotaton"] = cfg["augmentation"].pop("rotation")
    path = tmp_path / "plans.json"
    path.write_text(json.dumps(plans, indent=2))
    with pytest.raises(PlanError, match=rf"^{path}: invalid plan at configurations/3d_cpu/augmentation/rotaton: "
                                        r"unknown key 'rotaton' \(did you mean 'rotation'\?\); expected one of "):
        load_plans(path)


def test_an_added_key_is_refused_even_without_a_near_miss(plans_by_task):
    plans, cfg = _edited(plans_by_task[("segmentation", "cpu")])
    cfg["training"]["loss"]["label_smoothing"] = 0.1
    with pytest.raises(PlanError, match=r"configurations/3d_cpu/training/loss/label_smoothing: unknown key "
                                        r"'label_smoothing'; expected one of batch_dice, "):
        validate_plans(plans, "plans.json")
    plans, _ = _edited(plans_by_task[("segmentation", "cpu")])
    plans["tsak"] = "detection"
    with pytest.raises(PlanError, match=r"invalid plan at tsak: unknown key 'tsak' \(did you mean 'task'\?\)"):
        validate_plans(plans, "plans.json")


def test_an_unknown_loss_name_is_refused(plans_by_task):
    plans, cfg = _edited(plans_by_task[("segmentation", "cpu")])
    cfg["training"]["loss"]["name"] = "dice_cee"
    with pytest.raises(PlanError, match=r"invalid plan at configurations/3d_cpu/training/loss/name: unknown loss "
                                        r"'dice_cee'; registered: dice_ce"):
        validate_plans(plans, "plans.json")


@pytest.mark.parametrize("where, key", [
    (["training"], "foreground_oversampling"),
    (["training"], "num_workers"),
    (["training"], "val_iterations"),
    (["training"], "grad_clip"),
    (["training", "optimizer"], "momentum"),
    (["training", "optimizer"], "nesterov"),
    (["training", "optimizer"], "weight_decay"),
    (["training", "lr_schedule"], "exponent"),
    (["inference"], "tile_batch"),
    (["resampling"], "image"),
])
def test_values_read_without_a_fallback_are_required(plans_by_task, where, key):
    plans, cfg = _edited(plans_by_task[("segmentation", "cuda")], "3d_fullres")
    section = cfg
    for name in where:
        section = section[name]
    del section[key]
    path = "/".join(["configurations", "3d_fullres", *where])
    with pytest.raises(PlanError, match=rf"invalid plan at {path}: '{key}' is a required property"):
        validate_plans(plans, "plans.json")


def test_adamw_needs_its_weight_decay_and_takes_no_sgd_settings(plans_by_task):
    plans, cfg = _edited(plans_by_task[("detection", "cpu")])
    assert cfg["training"]["optimizer"]["name"] == "adamw"
    cfg["training"]["optimizer"]["momentum"] = 0.9
    with pytest.raises(PlanError, match=r"training/optimizer/momentum: unknown key 'momentum'"):
        validate_plans(plans, "plans.json")
    del cfg["training"]["optimizer"]["momentum"], cfg["training"]["optimizer"]["weight_decay"]
    with pytest.raises(PlanError, match=r"training/optimizer: 'weight_decay' is a required property"):
        validate_plans(plans, "plans.json")


def test_a_task_needs_its_own_section(plans_by_task):
    for task in ("detection", "longitudinal"):
        plans, cfg = _edited(plans_by_task[(task, "cpu")])
        del cfg[task]
        with pytest.raises(PlanError, match=rf"invalid plan at configurations/3d_cpu: '{task}' is a required property"):
            validate_plans(plans, "plans.json")


def test_out_of_range_augmentation_values_are_refused(plans_by_task):
    plans, cfg = _edited(plans_by_task[("segmentation", "cpu")])
    cfg["augmentation"]["rotation"]["p"] = 1.5
    with pytest.raises(PlanError, match=r"configurations/3d_cpu/augmentation/rotation/p: 1.5 is greater than"):
        validate_plans(plans, "plans.json")
    plans, cfg = _edited(plans_by_task[("segmentation", "cpu")])
    cfg["augmentation"]["mirror_axes"] = [0, 3]
    with pytest.raises(PlanError, match=r"configurations/3d_cpu/augmentation/mirror_axes/1: 3 is not one of"):
        validate_plans(plans, "plans.json")


def test_an_even_peak_window_is_refused(plans_by_task):
    plans, cfg = _edited(plans_by_task[("detection", "cpu")])
    cfg["detection"]["inference"]["peak_window"] = 4
    with pytest.raises(PlanError, match=r"^plans.json: invalid plan at configurations/3d_cpu/detection/inference/"
                                        r"peak_window: 4 is even"):
        validate_plans(plans, "plans.json")
    cfg["detection"]["inference"]["peak_window"] = 0
    with pytest.raises(PlanError, match=r"peak_window: 0 is less than the minimum of 1"):
        validate_plans(plans, "plans.json")


def test_unknown_architecture_and_region_order_name_the_plan(plans_by_task):
    """Regression: an unknown architecture was reported without the file, at network build time."""
    regions = plans_by_task[("regions", "cpu")]
    assert regions["outputs"]["regions_class_order"] == [1, 2]  # "whole" paints 1, the nested "core" 2
    plans, cfg = _edited(plans_by_task[("segmentation", "cpu")])
    cfg["network"]["architecture"] = "unet3"
    with pytest.raises(PlanError, match=r"^plans.json: invalid plan at configurations/3d_cpu/network/architecture: "
                                        r"unknown architecture 'unet3'; registered: "):
        validate_plans(plans, "plans.json")
    plans, _ = _edited(regions)
    plans["outputs"]["regions_class_order"] = [1]
    with pytest.raises(PlanError, match=r"outputs/regions_class_order: 1 values for 2 regions"):
        validate_plans(plans, "plans.json")
