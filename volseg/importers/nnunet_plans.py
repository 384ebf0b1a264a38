"""nnU-Net v2 ``plans.json`` + ``dataset.json`` → a volseg plan with one configuration.

What is mapped (nnU-Net's values are in its transposed axis order; volseg's in the image's
(z, y, x) order, see :mod:`volseg.importers.nnunet_axes`):

* spacing, patch size, batch size, median shape of the configuration;
* normalization per channel: ``CTNormalization`` → ``ct`` (clip to the foreground's 0.5 and
  99.5 percentiles, then its mean and std from ``foreground_intensity_properties_per_channel``),
  ``ZScoreNormalization`` → ``zscore`` (``use_mask_for_norm`` → ``use_nonzero_mask``),
  ``NoNormalization`` → ``none``;
* cropping to the non-zero region (nnU-Net's preprocessor always crops);
* labels (the ``ignore`` label has no output), regions (label lists) and
  ``regions_class_order``;
* the network (:mod:`volseg.importers.nnunet_architecture`), the mirroring axes of the
  checkpoint, tile step 0.5 and Gaussian σ = patch / 8 as nnU-Net predicts.

Resampling is volseg's (linear); nnU-Net resamples images with third-order splines. Cases
already at the configuration's spacing are not resampled by either.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from volseg.errors import PlanError

NORMALIZATIONS = {"CTNormalization": "ct", "ZScoreNormalization": "zscore", "NoNormalization": "none"}
READERS = ("SimpleITKIO", "NibabelIO")  # both give (z, y, x) arrays in the file's voxel order
PREPROCESSORS = ("DefaultPreprocessor",)
LABEL_MANAGERS = ("LabelManager",)
STEP_FRACTION = 0.5  # nnUNetPredictor's default tile_step_size
GAUSSIAN_SIGMA_SCALE = 0.125  # nnU-Net's Gaussian: sigma = patch / 8


def resolve_configuration(plans: dict, name: str, path: str | os.PathLike) -> dict:
    """Configuration ``name`` of an nnU-Net plan with its ``inherits_from`` chain applied.

    Raises:
        PlanError: Naming ``path``: no such configuration (the available ones listed), an
            inheritance cycle, or a cascade stage (``previous_stage``), which needs the
            previous stage's segmentation as input.
    """
    configs = plans.get("configurations")
    if not isinstance(configs, dict) or not configs:
        raise PlanError(path, "not an nnU-Net plan: no configurations")
    if name not in configs:
        raise PlanError(path, f"no configuration {name!r}; the plan has {', '.join(sorted(configs))} "
                        "(choose one with --configuration)")
    chain, current = [], name
    while current is not None:
        if current in chain or current not in configs:
            raise PlanError(path, f"configuration {chain[-1]!r} inherits from {current!r}, "
                            f"{'a cycle' if current in chain else 'which the plan lacks'}")
        chain.append(current)
        current = configs[current].get("inherits_from")
    merged: dict = {}
    for part in reversed(chain):
        merged.update({k: v for k, v in configs[part].items() if k != "inherits_from"})
    if merged.get("previous_stage"):
        raise PlanError(path, f"configuration {name!r} is a cascade stage after {merged['previous_stage']!r}: it needs "
                        "that stage's segmentation as an input channel, which volseg does not provide")
    return merged


def map_normalization(plans: dict, config: dict, num_channels: int, name: str,
                      path: str | os.PathLike) -> list[dict]:
    """The volseg ``normalization`` entries of an nnU-Net configuration, one per channel.

    Raises:
        PlanError: Naming ``path``: a scheme volseg cannot represent (named, with the channel),
            lists of the wrong length, or CT intensity statistics missing.
    """
    schemes, masks = config.get("normalization_schemes"), config.get("use_mask_for_norm")
    if not isinstance(schemes, list) or len(schemes) != num_channels:
        raise PlanError(path, f"configuration {name!r}: normalization_schemes must list one scheme per channel "
                        f"({num_channels}), got {schemes!r}")
    masks = masks if isinstance(masks, list) and len(masks) == num_channels else [False] * num_channels
    props = plans.get("foreground_intensity_properties_per_channel") or {}
    out = []
    for c, (scheme, mask) in enumerate(zip(schemes, masks)):
        if scheme not in NORMALIZATIONS:
            raise PlanError(path, f"configuration {name!r} normalizes channel {c} with {scheme}, which volseg cannot "
                            f"represent; volseg maps {', '.join(NORMALIZATIONS)}")
        entry: dict = {"channel": c, "scheme": NORMALIZATIONS[scheme]}
        if scheme == "CTNormalization":
            p = props.get(str(c))
            need = ("percentile_00_5", "percentile_99_5", "mean", "std")
            if not isinstance(p, dict) or any(not isinstance(p.get(k), (int, float)) for k in need):
                raise PlanError(path, f"CTNormalization of channel {c} needs foreground_intensity_properties_per_channel"
                                f"[\"{c}\"] with {', '.join(need)}")
            entry.update(clip=[float(p["percentile_00_5"]), float(p["percentile_99_5"])], mean=float(p["mean"]),
                         std=max(float(p["std"]), 1e-8))  # nnU-Net divides by max(std, 1e-8), as volseg does
        elif scheme == "ZScoreNormalization":
            entry["use_nonzero_mask"] = bool(mask)
        out.append(entry)
    return out


def map_labels(dataset: dict, path: str | os.PathLike) -> tuple[dict, dict]:
    """``(volseg dataset labels, volseg outputs)`` of an nnU-Net ``dataset.json``.

    nnU-Net trains regions (one sigmoid per region) when a label value is a list of more than
    one value, and a softmax over the label values otherwise. The ``ignore`` label gets no
    output channel and is left out.

    Raises:
        PlanError: Naming ``path``: no background 0, non-consecutive softmax labels, regions
            without ``regions_class_order`` or with one of the wrong length, or a painting
            order volseg cannot follow (it paints larger regions first, nnU-Net in channel order).
    """
    labels = dataset.get("labels")
    if not isinstance(labels, dict) or labels.get("background") not in (0, [0]):
        raise PlanError(path, "labels must declare background as 0, e.g. {\"background\": 0, ...}")
    kept = {k: v for k, v in labels.items() if k != "ignore"}
    regions_mode = any(isinstance(v, list) and len(v) > 1 for v in kept.values())
    if not regions_mode:
        values = sorted({int(v[0] if isinstance(v, list) else v) for v in kept.values()})
        if values != list(range(len(values))):
            raise PlanError(path, f"label values must be consecutive from 0, got {values}")
        volseg_labels = {k: int(v[0] if isinstance(v, list) else v) for k, v in kept.items()}
        return volseg_labels, {"mode": "softmax", "num_outputs": len(values), "class_values": values}
    regions = {k: [int(x) for x in (v if isinstance(v, list) else [v])] for k, v in kept.items() if k != "background"}
    order = dataset.get("regions_class_order")
    if not isinstance(order, list) or len(order) != len(regions):
        raise PlanError(path, f"region-based labels need regions_class_order with one label value per region "
                        f"({len(regions)}), got {order!r}")
    sizes = [len(set(v)) for v in regions.values()]
    if any(a < b for a, b in zip(sizes, sizes[1:])):
        raise PlanError(path, "regions must be listed from the largest to the smallest union of labels: nnU-Net paints "
                        "them in that order, volseg paints larger regions first; got sizes "
                        f"{dict(zip(regions, sizes))}")
    volseg_labels = {"background": 0, **regions}
    return volseg_labels, {"mode": "sigmoid", "num_outputs": len(regions), "regions": regions,
                           "regions_class_order": [int(v) for v in order]}


def check_plan_kind(plans: dict, config: dict, name: str, path: str | os.PathLike) -> None:
    """Refuse what volseg's preprocessing would do differently (reader, preprocessor, label manager, 2D).

    Raises:
        PlanError: Naming ``path`` and the setting.
    """
    reader = plans.get("image_reader_writer", "SimpleITKIO")
    if reader not in READERS:
        raise PlanError(path, f"image_reader_writer {reader!r} cannot be followed; volseg reads images as "
                        f"{' and '.join(READERS)} do")
    pre = config.get("preprocessor_name", "DefaultPreprocessor")
    if pre not in PREPROCESSORS:
        raise PlanError(path, f"configuration {name!r} uses preprocessor {pre!r}; volseg follows DefaultPreprocessor")
    manager = plans.get("label_manager", "LabelManager")
    if manager not in LABEL_MANAGERS:
        raise PlanError(path, f"label_manager {manager!r} cannot be followed; volseg follows LabelManager")
    for key in ("spacing", "patch_size"):
        value = config.get(key)
        if not isinstance(value, list) or len(value) != 3:
            raise PlanError(path, f"configuration {name!r}: {key} {value!r} is not 3D; volseg imports 3D configurations")


def build_plans(*, dataset_name: str, channel_names: dict, labels: dict, outputs: dict, normalization: list[dict],
                config_name: str, spacing: Sequence[float], patch_size: Sequence[int], batch_size: int,
                median_shape: Sequence[float] | None, network: dict, mirror_axes: Sequence[int],
                batch_dice: bool | None, file_ending: str) -> dict:
    """A volseg plan with the one configuration ``config_name``; every value in (z, y, x) order.

    Training settings are the planner's GPU defaults (nnU-Net's schedule), so the imported
    model can be fine-tuned with ``volseg train``; prediction reads only what is mapped.
    """
    from volseg import __version__
    from volseg.data.augmentation import default_augmentation
    from volseg.data.sampling import FOREGROUND_OVERSAMPLING
    from volseg.planning.planner import (CPU_TILE_BATCH, GRAD_CLIP, LR_SCHEDULE, PLANS_FORMAT, PLANS_VERSION,
                                         SCORE_EMA_MOMENTUM, SGD_OPTIMIZER, TRAINING_CUDA)
    from volseg.training.losses import default_deep_supervision_weights

    patch = [int(p) for p in patch_size]
    spacing = [float(s) for s in spacing]
    mirror = sorted(int(a) for a in mirror_axes)
    loss = {"name": "dice_ce", "deep_supervision_weights": default_deep_supervision_weights(len(network["strides"]) - 1),
            "region_based": outputs["mode"] == "sigmoid"}
    if batch_dice is not None:
        loss["batch_dice"] = bool(batch_dice)
    config = {
        "spacing": spacing,
        "patch_size": patch,
        "batch_size": int(batch_size),
        "device": "cuda",
        "resampling": {"image": "linear", "label": "linear_onehot"},
        "network": network,
        "training": {"epochs": TRAINING_CUDA["epochs"], "iterations_per_epoch": TRAINING_CUDA["iterations_per_epoch"],
                     "val_iterations": TRAINING_CUDA["val_iterations"], "optimizer": dict(SGD_OPTIMIZER),
                     "lr_schedule": dict(LR_SCHEDULE), "grad_clip": GRAD_CLIP, "loss": loss,
                     "foreground_oversampling": FOREGROUND_OVERSAMPLING, "num_workers": TRAINING_CUDA["num_workers"],
                     "amp": True, "deterministic": False, "score_ema_momentum": SCORE_EMA_MOMENTUM,
                     "best_checkpoint": "score_ema"},
        "augmentation": default_augmentation(patch, spacing, mirror),
        "inference": {"step_fraction": STEP_FRACTION, "gaussian_sigma_scale": GAUSSIAN_SIGMA_SCALE,
                      "gaussian_center": "half_index", "mirror_axes": mirror, "tile_batch": int(batch_size),
                      "tile_batch_cpu": CPU_TILE_BATCH},
    }
    if median_shape is not None:
        config["median_shape"] = [int(round(float(s))) for s in median_shape]
    return {"format": PLANS_FORMAT, "version": PLANS_VERSION, "volseg_version": __version__, "anisotropic": False,
            "dataset": {"name": dataset_name, "task": "segmentation", "channel_names": channel_names,
                        "labels": labels, "timepoints": None, "instance_labels": False, "file_ending": file_ending},
            "task": "segmentation", "normalization": normalization, "crop_to_nonzero": True, "outputs": outputs,
            "default_configuration": config_name, "configurations": {config_name: config}}


def channel_names(dataset: dict, path: str | os.PathLike) -> dict:
    """``{"0": name, ...}`` from ``channel_names`` (or the older ``modality``) of ``dataset.json``.

    Raises:
        PlanError: Neither key, or keys other than 0..C-1.
    """
    names = dataset.get("channel_names", dataset.get("modality"))
    if not isinstance(names, dict) or not names:
        raise PlanError(path, "dataset.json has no channel_names")
    if sorted(names, key=lambda k: int(k) if str(k).isdigit() else -1) != [str(i) for i in range(len(names))]:
        raise PlanError(path, f"channel_names keys must be 0..{len(names) - 1}, got {sorted(names)}")
    return {str(i): str(names[str(i)]) for i in range(len(names))}


def file_ending(dataset: dict) -> str:
    """The dataset's NIfTI ending, or ``.nii.gz`` for datasets kept in another format."""
    ending = dataset.get("file_ending", ".nii.gz")
    return ending if ending in (".nii.gz", ".nii") else ".nii.gz"


def default_configuration(folder: Path) -> str | None:
    """The configuration a trainer folder ``TRAINER__PLANS__CONFIGURATION`` was trained with.

    Example:
        >>> default_configuration(Path("nnUNetTrainer__nnUNetPlans__3d_fullres"))
        '3d_fullres'
    """
    parts = folder.name.split("__")
    return parts[2] if len(parts) == 3 and all(parts) else None
