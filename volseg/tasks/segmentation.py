"""Semantic segmentation: softmax over label values, or one sigmoid per region.

The first implementation of :class:`~volseg.tasks.base.Task`: a plan-built U-Net with deep
supervision, Dice + cross-entropy, pseudo-Dice on validation patches, dense Gaussian
stitching, label maps (and probability / entropy maps) as NIfTI, and connected-component
post-processing chosen on the held-out predictions.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from volseg.errors import VolsegError
from volseg.tasks.base import CasePrediction, register_task


class NamedLoss(torch.nn.Module):
    """Wraps a loss module so that it returns ``{name: scalar}`` (the loop sums the terms)."""

    def __init__(self, name: str, loss: torch.nn.Module) -> None:
        super().__init__()
        self.name, self.loss = name, loss

    def forward(self, outputs, targets) -> dict[str, torch.Tensor]:
        return {self.name: self.loss(outputs, targets)}


def ds_scales(config: dict) -> list[list[float]] | None:
    """Per-output downsampling factors of the deep-supervision targets (None without deep supervision)."""
    from volseg.networks import deep_supervision_scales

    if not config["network"].get("deep_supervision", True):
        return None
    return [list(s) for s in deep_supervision_scales(config["network"]["strides"])]


def write_reference(label_file: Path, dst: Path, instance_file: Path | None = None) -> None:
    """Copy a reference label map to ``dst``; an instance map (with its ``CASE.json``) becomes its class map."""
    if instance_file is None:
        shutil.copyfile(label_file, dst)
        return
    from volseg.fingerprint.case import semantic_label
    from volseg.io.dataset import read_instances
    from volseg.io.nifti import read_image, write_image

    label, geometry = read_image(label_file)
    write_image(dst, semantic_label(label, read_instances(instance_file)).astype(np.uint8), geometry)


EXPORTED_MAPS = ("possible", "max_prob", "expected_entropy", "mutual_information")


def exported_maps(prediction: CasePrediction) -> dict[str, np.ndarray]:
    """The maps of ``prediction.maps`` that export writes as ``maps/CASE_<name>`` images (the
    uncertainty maps, the calibrated ``possible`` voxels and the per-class ``set_<class>`` masks)."""
    return {k: v for k, v in prediction.maps.items()
            if v is not None and (k in EXPORTED_MAPS or k.startswith("set_"))}


class ComponentRules:
    """Connected-component post-processing, chosen on the held-out label maps (``postprocessing.json``)."""

    name = "postprocessing"

    def __init__(self, plans: dict) -> None:
        self.plans = plans

    def fit(self, validation_dirs: list[Path]) -> dict | None:
        """Rules chosen on every ``fold_K/validation/`` folder's predictions and references."""
        from volseg.io.nifti import read_image
        from volseg.postprocessing.choose import choose_rules

        if self.plans["outputs"]["mode"] != "softmax":
            return None
        ending = self.plans["dataset"].get("file_ending", ".nii.gz")
        cases = []
        for folder in validation_dirs:
            for ref in sorted((folder / "reference").glob(f"*{ending}")):
                pred = folder / ref.name
                if pred.is_file():
                    p, g = read_image(pred)
                    r, _ = read_image(ref)
                    cases.append((p.astype(np.int16), r.astype(np.int16), g.spacing))
        if not cases:
            return None
        values = [v for v in self.plans["outputs"]["class_values"] if v != 0]
        chosen = choose_rules(cases, values)
        chosen["num_cases"] = len(cases)
        return chosen

    def apply(self, prediction: CasePrediction, params: dict, spacing: Sequence[float]) -> CasePrediction:
        from volseg.postprocessing import apply_rules

        prediction.labels = apply_rules(prediction.labels, params["rules"], spacing)
        return prediction


@register_task("segmentation")
class SegmentationTask:
    """Dense labels from the plan's ``outputs`` (softmax classes or sigmoid regions).

    Args:
        plans: The plan (``outputs``, ``dataset.channel_names`` are read).
    """

    name = "segmentation"
    score_name = "pseudo-Dice"

    def __init__(self, plans: dict) -> None:
        self.plans = plans
        self.outputs = plans["outputs"]
        self.mode = self.outputs["mode"]
        self.regions = self.outputs.get("regions")
        self.config: dict | None = None  # bound by prepare()

    @classmethod
    def plan_outputs(cls, labels: dict) -> dict:
        """Softmax over the label values, or one sigmoid per region when ``labels`` has regions."""
        from volseg.planning.planner import determine_outputs

        return determine_outputs(labels)

    @classmethod
    def configure(cls, fingerprint: dict, config: dict) -> dict:
        """Segmentation adds nothing to the planner's configuration."""
        return config

    @classmethod
    def estimate_network(cls, fingerprint: dict, spacing: list[float], network: dict, device: str) -> dict:
        """The plain U-Net costs what the planner estimates for it."""
        return network

    def prepare(self, config: dict) -> None:
        """Bind the configuration that is trained or predicted with."""
        self.config = config

    def build_network(self, config: dict) -> torch.nn.Module:
        from volseg.networks import from_plans

        return from_plans(config["network"], len(self.plans["dataset"]["channel_names"]), self.outputs["num_outputs"])

    def loader_options(self, config: dict) -> dict:
        """Training reads the class label maps; forced samples are centred on their voxel."""
        return {"labels": "classes", "random_offset": False}

    def targets(self, config: dict, training: bool = True):
        """Label map → one nearest-neighbour target per deep-supervision output (or one target)."""
        from volseg.data.augmentation import DeepSupervisionTargets

        return DeepSupervisionTargets(ds_scales(config))

    def loss(self, config: dict) -> NamedLoss:
        from volseg.training.losses import build_loss

        loss_cfg = config["training"]["loss"]
        base = build_loss(loss_cfg, mode=self.mode, deep_supervision=ds_scales(config) is not None,
                          regions=self.regions)
        return NamedLoss(loss_cfg["name"], base)

    def batch_stats(self, outputs, targets) -> torch.Tensor:
        """Per-class (tp, fp, fn) of the full-resolution output, (3, K') float64 on the CPU."""
        from volseg.training.losses import labels_to_regions
        from volseg.training.metrics import confusion_counts

        full = outputs[0] if isinstance(outputs, (list, tuple)) else outputs
        tgt = targets[0] if isinstance(targets, (list, tuple)) else targets
        if self.mode == "sigmoid":
            tgt = labels_to_regions(tgt, self.regions)
        return confusion_counts(full.float(), tgt, self.mode).cpu()

    def score(self, stats: torch.Tensor) -> tuple[float, dict]:
        """Mean pseudo-Dice over the classes that occurred (NaN when none did)."""
        from volseg.training.metrics import dice_from_counts

        dice = dice_from_counts(stats)
        finite = [d for d in dice if not np.isnan(d)]
        return (float(sum(finite) / len(finite)) if finite else float("nan")), {"pseudo_dice": dice}

    def aggregator(self, config: dict, props: dict, options, device: torch.device, calibration: dict | None = None):
        """Dense stitching; resampled afterwards (logits kept) when the network grid differs from the crop."""
        from volseg.inference.dense import dense_aggregator

        same_grid = list(props["shape_after_resampling"]) == list(props["shape_after_crop"])
        calibrated = options.keeps_conformal_inputs and self.conformal_kind == "dense"
        want_probs = options.save_probabilities or self.mode == "sigmoid" or calibrated
        budget = None if options.memory_budget_gb is None else int(options.memory_budget_gb * 1e9)
        return dense_aggregator(self.outputs["num_outputs"], props["shape_after_resampling"], config["patch_size"],
                                config["inference"]["gaussian_sigma_scale"], options.backend, device, self.mode,
                                return_probabilities=want_probs and same_grid,
                                return_uncertainty=options.uncertainty,
                                return_logits=not same_grid, memory_budget_bytes=budget,
                                gaussian_center=config["inference"].get("gaussian_center", "middle"))

    def restore(self, result, props: dict, geometry, options) -> CasePrediction:
        """Resample (when needed), finalize and un-crop the stitched result onto the input grid."""
        calibrated = options.keeps_conformal_inputs and self.conformal_kind == "dense"
        lab, p, ent, maps = self.dense_on_input_grid(result, props, geometry, options,
                                                     options.save_probabilities or calibrated)
        if calibrated:
            maps["probabilities"] = p
        return CasePrediction(labels=lab, probabilities=p if options.save_probabilities else None, entropy=ent,
                              maps=maps)

    def dense_on_input_grid(self, result, props: dict, geometry, options, keep_probabilities: bool):
        """``(labels uint8, probabilities fp16 (K, ...) or None, entropy fp16 or None, maps)`` on the
        input grid; ``maps`` holds the fp16 ``max_prob`` (softmax: the largest class probability;
        sigmoid: the least certain region's max(p, 1 − p)), ``expected_entropy`` and
        ``mutual_information`` (nats, across folds and mirrors) when uncertainty is asked for."""
        from volseg.inference.restore import (dense_to_input_grid, map_to_input_grid, regions_to_labels,
                                              resample_and_finalize)

        if result.logits is None:
            fin = result
        else:
            fin = resample_and_finalize(result.logits, props["shape_after_crop"], mode=self.mode,
                                        return_probabilities=keep_probabilities or self.mode == "sigmoid",
                                        return_uncertainty=options.uncertainty, backend=options.backend,
                                        member_terms=options.uncertainty)
        labels, probs, entropy = fin.labels, fin.probabilities, fin.entropy
        if self.mode == "sigmoid":
            labels = regions_to_labels(probs.float(), self.regions, self.outputs.get("regions_class_order"))
        maps = {name: map_to_input_grid(getattr(fin, name), props, geometry.shape, 1.0 if name == "max_prob" else 0.0)
                for name in ("max_prob", "expected_entropy", "mutual_information") if getattr(fin, name, None) is not None}
        return (*dense_to_input_grid(labels, probs if keep_probabilities else None, entropy, props, geometry.shape,
                                     self.outputs), maps)

    def postprocess(self, prediction: CasePrediction, calibration: dict, spacing: Sequence[float]) -> CasePrediction:
        for calibrator in self.calibrators():
            if calibration.get(calibrator.name):
                prediction = calibrator.apply(prediction, calibration[calibrator.name], spacing)
        return prediction

    conformal_kind = "dense"

    def conformal_targets(self, probabilities: np.ndarray, by_class: bool) -> dict[str, tuple[np.ndarray, tuple]]:
        """What a conformal threshold applies to: target → (float32 (Z, Y, X) score, reference
        label values). One ``"all"`` target (softmax: 1 − p(background); sigmoid: the largest
        region probability), or one per class / region with ``by_class``."""
        from volseg.inference.restore import label_values

        p = probabilities
        names = self.output_names()
        if self.mode == "softmax":
            values = [int(v) for v in label_values(self.outputs)]
            used = {int(v) for v in self.outputs.get("class_values", values)}
            if by_class:
                return {names[k]: (p[k].astype(np.float32), (values[k],)) for k in range(1, p.shape[0])
                        if values[k] in used}
            return {"all": (1.0 - p[0].astype(np.float32), tuple(v for v in values[1:] if v in used))}
        regions = list(self.regions.values())
        if by_class:
            return {names[r]: (p[r].astype(np.float32), tuple(regions[r])) for r in range(p.shape[0])}
        return {"all": (p.max(axis=0).astype(np.float32), tuple(sorted({v for r in regions for v in r})))}

    def output_names(self) -> list[str]:
        """Name of each output channel: the label names (softmax) or the region names (sigmoid)."""
        if self.mode == "sigmoid":
            return list(self.regions)
        by_value = {int(v): k for k, v in self.plans["dataset"]["labels"].items() if not isinstance(v, list)}
        return [by_value.get(k, f"label_{k}") for k in range(self.outputs["num_outputs"])]

    def apply_conformal(self, prediction: CasePrediction, conformal: dict, calibration: dict,
                        spacing: Sequence[float]) -> CasePrediction:
        """Labels from the calibrated threshold(s) (``conformal["thresholds"]``: target → t; a voxel
        is in a target's set when its score is above t) instead of the argmax; ``maps["possible"]``
        marks the voxels the set adds to the plain prediction. Per class (``by == "class"``) the
        sets may overlap, so each is also kept as ``maps["set_<class>"]``: the guarantee is about
        those masks, while the label map gives an overlap voxel to its most probable class."""
        from volseg.inference.restore import label_values

        probs = prediction.probabilities if prediction.probabilities is not None else prediction.maps["probabilities"]
        thresholds = conformal["thresholds"]
        targets = self.conformal_targets(probs, conformal.get("by") == "class")
        missing = [name for name in targets if name not in thresholds]
        if missing:
            raise VolsegError(None, f"the calibration has no threshold for {', '.join(missing)} (no calibration case "
                              "had such a lesion): calibrate again without --by class, or with cases that have one")
        if conformal.get("by") == "class":
            for name, (score, _) in targets.items():
                prediction.maps[f"set_{name}"] = (score > np.float32(thresholds[name])).astype(np.uint8)
        plain = prediction.labels
        labels = np.zeros(plain.shape, np.uint8)
        if self.mode == "softmax" and "all" in thresholds:
            values = label_values(self.outputs)
            inside = targets["all"][0] > np.float32(thresholds["all"])
            labels[inside] = values[1 + np.argmax(probs[1:, inside], axis=0)]
        elif self.mode == "softmax":
            best = np.full(plain.shape, -1.0, np.float32)
            for name, (score, values) in targets.items():
                win = (score > np.float32(thresholds[name])) & (score > best)
                labels[win], best[win] = values[0], score[win]
        else:
            order = sorted(range(probs.shape[0]), key=lambda r: -len(list(self.regions.values())[r]))
            names, regions = list(self.regions), list(self.regions.values())
            for r in order:
                t = thresholds[names[r]] if names[r] in thresholds else thresholds["all"]
                labels[probs[r].astype(np.float32) > np.float32(t)] = max(regions[r])
        prediction.labels = labels
        prediction.maps["possible"] = ((labels > 0) & (plain == 0)).astype(np.uint8)
        return prediction

    def calibrated_copy(self, prediction: CasePrediction, conformal: dict, calibration: dict,
                        spacing: Sequence[float], options) -> CasePrediction:
        """What ``--calibrated`` makes of a restored prediction, as a new prediction that shares
        its arrays: ``prediction`` keeps its labels and maps for the plain post-processing."""
        return self.apply_conformal(replace(prediction, maps=dict(prediction.maps)), conformal, calibration, spacing)

    def export(self, out_dir: Path, case_id: str, ending: str, geometry, prediction: CasePrediction) -> list[Path]:
        from volseg.inference.export import export_case

        return export_case(out_dir, case_id, ending, geometry, prediction.labels, prediction.probabilities,
                           prediction.entropy, extra_maps=exported_maps(prediction),
                           probabilities_layout=prediction.probabilities_layout)

    def done_file(self, out_dir: Path, case_id: str, ending: str) -> Path:
        return Path(out_dir) / f"{case_id}{ending}"

    def finish_folder(self, out_dir: Path, case_ids: list[str]) -> None:
        """Nothing to gather: every case's files are complete on their own."""

    def validation_options(self) -> dict:
        """Held-out cases keep their fp16 probabilities (``volseg calibrate`` calibrates on them) and
        their uncertainty maps and per-case scores."""
        return {"save_probabilities": True, "save_uncertainty": True}

    def evaluate_validation(self, pred_dir: Path, dataset_root: Path, case_ids: list[str]) -> dict:
        """Score the held-out predictions in ``pred_dir`` against the dataset's label maps (copied, or
        turned from instance maps into class maps, into ``pred_dir/reference``)."""
        from volseg.evaluation import evaluate_folders

        ending = self.plans["dataset"].get("file_ending", ".nii.gz")
        ref = pred_dir / "reference"
        ref.mkdir(exist_ok=True)
        for c in case_ids:
            src, dst = dataset_root / "labelsTr" / f"{c}{ending}", ref / f"{c}{ending}"
            if not dst.exists():
                write_reference(src, dst, dataset_root / "labelsTr" / f"{c}.json"
                                if self.plans["dataset"].get("instance_labels") else None)
        return evaluate_folders(pred_dir, ref, pred_dir / "evaluation", dataset_dir=dataset_root, num_workers=1,
                                plots=True, worst=2)

    def calibrators(self) -> list[ComponentRules]:
        return [ComponentRules(self.plans)]
