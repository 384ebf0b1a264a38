"""From a fingerprint to plans.json: every decision of every configuration.

The planner is a chain of small ``determine_*`` functions; each configuration is plain
data. Nothing downstream re-derives a decision: training, inference and evaluation read
only the plan.

Configurations:

* ``3d_fullres`` — target spacing, patch and batch sized to the GPU memory budget
  (``memory_gb``, default 8 GB, with mixed precision).
* ``3d_lowres`` — only when the full-resolution patch covers less than a quarter of the
  median image: spacing coarsened until it covers a quarter.
* ``3d_cpu`` — sized for training on a CPU: at most ``cpu_gflop`` GFLOP of convolution per
  iteration (≈1 s on 2 cores), half the features, spacing coarsened up to 2× when that
  lets the patch cover more of the image (never so far that the smaller objects span
  fewer than 3 voxels), and a short schedule.
"""

from __future__ import annotations

import numpy as np

from volseg import __version__
from volseg.io.dataset import region_paint_values
from volseg.planning.memory import estimate_gflop, estimate_memory_gb
from volseg.planning.normalization import determine_normalization
from volseg.planning.patch import batch_size_for, fit_patch
from volseg.planning.spacing import determine_target_spacing, resampled_shape

PLANS_FORMAT = "volseg-plans"
PLANS_VERSION = 1
LOWRES_MIN_COVERAGE = 0.25
CPU_MAX_SPACING_FACTOR = 2.0
CPU_MIN_OBJECT_VOXELS = 3.0

TRAINING_CUDA = {"epochs": 1000, "iterations_per_epoch": 250, "val_iterations": 50, "num_workers": 6}
TRAINING_CPU = {"epochs": 30, "iterations_per_epoch": 20, "val_iterations": 4, "num_workers": 1}
# nnU-Net's optimizer and schedule; training reads every value from the plan, with no fallback
SGD_OPTIMIZER = {"name": "sgd", "lr": 0.01, "momentum": 0.99, "nesterov": True, "weight_decay": 3e-5}
LR_SCHEDULE = {"name": "poly", "exponent": 0.9}
GRAD_CLIP = 12.0
SCORE_EMA_MOMENTUM = 0.9  # smoothing of the validation score that picks checkpoint_best.pt
# Tiles per forward pass on the CPU for a configuration sized for a GPU. Its larger network runs
# each tile faster one at a time: a 16→256-feature U-Net on 64³ tiles, 2-core Xeon (AVX-512),
# 0.142 against 0.199 s per tile in torch, 0.078 against 0.080 s in OpenVINO (batch 1 against 2).
# The small 3d_cpu networks run as fast or faster two at a time and keep their batch.
CPU_TILE_BATCH = 1


def determine_outputs(labels: dict) -> dict:
    """What the network predicts: softmax over label values, or one sigmoid per region."""
    regions = {k: v for k, v in labels.items() if isinstance(v, list)}
    if regions:
        return {"mode": "sigmoid", "num_outputs": len(regions), "regions": regions,
                "regions_class_order": region_paint_values(regions)}
    values = sorted(v for v in labels.values())
    return {"mode": "softmax", "num_outputs": int(max(values)) + 1, "class_values": values}


def determine_task(dataset_task: str) -> str:
    """The registered task that trains a dataset of kind ``dataset_task`` (``dataset.json``'s
    ``task``): its own when registered, else dense segmentation of its label maps."""
    from volseg.tasks import list_tasks

    return dataset_task if dataset_task in list_tasks() else "segmentation"


def plan_experiment(fingerprint: dict, memory_gb: float = 8.0, device: str = "cuda",
                    cpu_gflop: float = 100.0, cpu_memory_gb: float = 8.0) -> dict:
    """Derive plans.json from a fingerprint.

    Args:
        fingerprint: As written by ``volseg plan`` (see :mod:`volseg.fingerprint`).
        memory_gb: GPU memory budget of ``3d_fullres`` / ``3d_lowres`` in GB.
        device: The device training will run on, "cuda" or "cpu": it picks the
            ``default_configuration`` (``3d_fullres`` or ``3d_cpu``).
        cpu_gflop: Convolution GFLOP per training iteration allowed for ``3d_cpu``.
        cpu_memory_gb: Memory budget of ``3d_cpu`` in GB.

    Returns:
        The plans as a JSON-ready dict (validate with :func:`volseg.planning.plans.validate_plans`).
    """
    ds = fingerprint["dataset"]
    n_in = len(ds["channel_names"])
    from volseg.tasks import task_class

    task = determine_task(ds["task"])
    outputs = task_class(task).plan_outputs(ds["labels"])
    n_out = outputs["num_outputs"]
    spacing, aniso = determine_target_spacing(fingerprint["median_spacing"], fingerprint["spacing_percentiles"]["p10"],
                                              fingerprint["median_shape_after_crop"])
    median_shape = _median_resampled_shape(fingerprint, spacing)
    n_cases = ds["num_cases"]

    def cost(device: str):
        """(memory GB, GFLOP) of a candidate network at a spacing, patch and batch, with what the
        task adds to it (e.g. detection heads)."""
        def estimate(net: dict, sp: list[float], patch: list[int], batch: int) -> tuple[float, float]:
            full = task_class(task).estimate_network(fingerprint, sp, net, device)
            return (estimate_memory_gb(full, patch, batch, n_in, n_out, device),
                    estimate_gflop(full, patch, batch, n_in, n_out))
        return estimate

    configs = {"3d_fullres": _gpu_configuration(spacing, median_shape, cost("cuda"), memory_gb, n_cases)}
    coverage = np.prod(configs["3d_fullres"]["patch_size"]) / np.prod(median_shape)
    if coverage < LOWRES_MIN_COVERAGE:
        configs["3d_lowres"] = _lowres_configuration(fingerprint, spacing, cost("cuda"), memory_gb, n_cases)
    configs["3d_cpu"] = _cpu_configuration(fingerprint, spacing, cost("cpu"), cpu_gflop, cpu_memory_gb)
    configs = {name: task_class(task).configure(fingerprint, cfg) for name, cfg in configs.items()}
    return {
        "format": PLANS_FORMAT,
        "version": PLANS_VERSION,
        "volseg_version": __version__,
        "dataset": {k: ds[k] for k in ("name", "task", "channel_names", "labels", "timepoints",
                                       "instance_labels", "file_ending")},
        "task": task,
        "outputs": outputs,
        "anisotropic": aniso,
        "crop_to_nonzero": True,
        "normalization": determine_normalization(ds["channel_names"], fingerprint["intensity"],
                                                 fingerprint["median_fraction_kept_by_crop"]),
        "default_configuration": "3d_fullres" if device == "cuda" else "3d_cpu",
        "configurations": configs,
    }


def _median_resampled_shape(fingerprint: dict, spacing: list[float]) -> list[float]:
    shapes = [resampled_shape(c["shape_after_crop"], c["spacing"], spacing) for c in fingerprint["cases"]]
    return np.median(np.asarray(shapes, dtype=float), axis=0).tolist()


def _gpu_configuration(spacing, median_shape, cost, memory_gb, n_cases) -> dict:
    """``cost(network, spacing, patch, batch)`` → (memory GB, GFLOP), as ``plan_experiment``'s."""
    patch, network = fit_patch(spacing, median_shape, lambda n, p: cost(n, spacing, p, 2)[0] <= memory_gb)
    one, two = cost(network, spacing, patch, 1)[0], cost(network, spacing, patch, 2)[0]
    batch = batch_size_for(two - one, 2 * one - two, memory_gb, patch, median_shape, n_cases)
    est, gflop = cost(network, spacing, patch, batch)
    return _configuration(spacing, median_shape, patch, batch, network, "cuda", memory_gb, est, gflop, TRAINING_CUDA)


def _lowres_configuration(fingerprint, spacing, cost, memory_gb, n_cases) -> dict:
    low = list(spacing)
    for _ in range(200):
        finest = min(low)
        low = [s * 1.03 if s < 2 * finest else s for s in low]
        shape = _median_resampled_shape(fingerprint, low)
        patch, _ = fit_patch(low, shape, lambda n, p, sp=low: cost(n, sp, p, 2)[0] <= memory_gb)
        if np.prod(patch) / np.prod(shape) >= LOWRES_MIN_COVERAGE:
            break
    return _gpu_configuration(low, shape, cost, memory_gb, n_cases)


def _cpu_configuration(fingerprint, spacing, cost, gflop, memory_gb) -> dict:
    max_factor = _cpu_max_spacing_factor(fingerprint, spacing)
    best = None
    for factor in np.linspace(1.0, max_factor, 5):
        sp = [s * factor for s in spacing]
        shape = _median_resampled_shape(fingerprint, sp)

        def fits(net: dict, patch: list[int], sp=sp) -> bool:
            mem, flop = cost(net, sp, patch, 2)
            return flop <= gflop and mem <= memory_gb

        patch, network = fit_patch(sp, shape, fits, base_features=16, max_features=256)
        coverage = float(np.prod(patch) / np.prod(shape))
        if best is None or coverage > best[0] + 0.05:
            best = (coverage, sp, shape, patch, network)
        if coverage >= 0.5:
            break
    _, sp, shape, patch, network = best
    est, flop = cost(network, sp, patch, 2)
    return _configuration(sp, shape, patch, 2, network, "cpu", memory_gb, est, flop, TRAINING_CPU)


def _cpu_max_spacing_factor(fingerprint: dict, spacing: list[float]) -> float:
    """How far ``3d_cpu`` may coarsen: ≤ 2×, and small objects keep ≥ 3 voxels across."""
    small = [o["diameter_mm_p05"] for o in fingerprint.get("objects", {}).values()]
    if not small:
        return CPU_MAX_SPACING_FACTOR
    by_objects = min(small) / CPU_MIN_OBJECT_VOXELS / max(spacing)
    return float(np.clip(by_objects, 1.0, CPU_MAX_SPACING_FACTOR))


def _configuration(spacing, median_shape, patch, batch, network, device, budget, est, gflop, training) -> dict:
    from volseg.data.augmentation import default_augmentation
    from volseg.data.sampling import FOREGROUND_OVERSAMPLING
    from volseg.training.losses import default_deep_supervision_weights

    if len(network["strides"]) < 2:  # the budget left a patch too small to down-sample even once
        from volseg.errors import PlanError

        raise PlanError(None, f"{'--memory-gb' if device == 'cuda' else 'the CPU budget'} {budget:g} is too small "
                        f"for a U-Net on this data: the largest patch that fits, {[int(p) for p in patch]}, "
                        f"leaves a single resolution stage; give it more")
    mirror_axes = [0, 1, 2]
    return {
        "spacing": [round(float(s), 6) for s in spacing],
        "median_shape": [int(round(s)) for s in median_shape],
        "patch_size": [int(p) for p in patch],
        "batch_size": int(batch),
        "device": device,
        "memory_budget_gb": float(budget),
        "memory_estimate_gb": round(float(est), 3),
        "gflop_per_iteration": round(float(gflop), 2),
        "resampling": {"image": "linear", "label": "linear_onehot"},
        "network": network,
        "training": {
            "epochs": training["epochs"], "iterations_per_epoch": training["iterations_per_epoch"],
            "val_iterations": training["val_iterations"],
            "optimizer": dict(SGD_OPTIMIZER),
            "lr_schedule": dict(LR_SCHEDULE),
            "grad_clip": GRAD_CLIP,
            "loss": {"name": "dice_ce", "deep_supervision_weights":
                     default_deep_supervision_weights(len(network["strides"]) - 1)},
            "foreground_oversampling": FOREGROUND_OVERSAMPLING,
            "num_workers": training["num_workers"],
            "amp": device == "cuda",
            "deterministic": device == "cpu",
            "score_ema_momentum": SCORE_EMA_MOMENTUM,
            "best_checkpoint": "score_ema",
        },
        "augmentation": default_augmentation([int(p) for p in patch], [float(s) for s in spacing], mirror_axes),
        "inference": {"step_fraction": 0.5, "gaussian_sigma_scale": 0.125, "gaussian_center": "middle",
                      "mirror_axes": mirror_axes,
                      "tile_batch": int(batch),
                      # a configuration sized for a GPU predicts one tile at a time on the CPU (see CPU_TILE_BATCH)
                      "tile_batch_cpu": int(batch) if device == "cpu" else CPU_TILE_BATCH},
    }
