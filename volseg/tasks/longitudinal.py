"""Change between two timepoints: lesions at baseline and follow-up, new and vanishing lesions.

A dataset of ``task: "longitudinal"`` has the channels of two timepoints (``dataset.json``
``timepoints``) and a label map on the baseline grid with 0 background and the label names
``stable``, ``new`` and ``vanishing`` (values 1, 2, 3 when unnamed). The network has four
sigmoid outputs, after SegHeD (:data:`volseg.postprocessing.longitudinal.HEADS`):

    baseline lesions   stable ∪ vanishing        follow-up lesions   stable ∪ new
    new lesions        new                       vanishing lesions   vanishing

trained with Dice + BCE per output plus a consistency term that penalises a new lesion
outside ``follow-up ∖ baseline`` and a vanishing lesion outside ``baseline ∖ follow-up``.
It sees both timepoints (the plan's ``longitudinal.fusion``: ``"difference"`` appends
follow-up − baseline to the input; ``"siamese"`` encodes each timepoint with a shared
encoder and fuses every level; ``"concat"`` is the plain channel stack). Training adds
change augmentation (:mod:`volseg.data.change`: timepoint swap, lesion paste,
misregistration) and oversamples new and vanishing lesions; every parameter is in the plan.

Prediction matches the per-timepoint lesions across timepoints
(:func:`volseg.postprocessing.longitudinal.classify_lesions`, with the threshold, minimum
size and matching overlap chosen on the held-out fold, ``lesion_matching.json``) and writes
the 0/1/2/3 label map and ``CASE_lesions.csv``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from volseg.errors import VolsegError
from volseg.tasks.base import CasePrediction, register_task
from volseg.tasks.segmentation import SegmentationTask, ds_scales

FUSIONS = ("difference", "siamese", "concat")
# the CPU configuration's short schedule: AdamW learns the small lesions far sooner than SGD
CPU_OPTIMIZER = {"name": "adamw", "lr": 1e-3, "weight_decay": 1e-4}
CPU_FOREGROUND_OVERSAMPLING = 0.66
CHANGE_LABELS = ("stable", "new", "vanishing")


def change_values(labels: dict) -> tuple[int, int, int]:
    """The label values of stable, new and vanishing lesions in a ``dataset.json`` ``labels`` dict."""
    if all(name in labels for name in CHANGE_LABELS):
        return tuple(int(labels[name]) for name in CHANGE_LABELS)
    values = sorted(int(v) for v in labels.values() if not isinstance(v, list) and int(v) != 0)
    if values == [1, 2, 3]:
        return 1, 2, 3
    raise VolsegError(None, 'task "longitudinal" needs labels named "stable", "new" and "vanishing" '
                      f"(or the values 1, 2, 3), found {labels}")


def timepoint_channels(channel_names: dict, timepoints: dict | None) -> tuple[list[int], list[int]]:
    """(baseline channel indices, follow-up channel indices): channel 0's timepoint is the baseline."""
    if not timepoints:
        raise VolsegError(None, 'task "longitudinal" needs "timepoints" in dataset.json, e.g. '
                          '{"0": "baseline", "1": "followup"}')
    order = sorted(int(k) for k in channel_names)
    names = list(dict.fromkeys(str(timepoints[str(c)]) for c in order))
    if len(names) != 2:
        raise VolsegError(None, f'task "longitudinal" needs exactly two timepoints, found {names}')
    base = [c for c in order if timepoints[str(c)] == names[0]]
    follow = [c for c in order if timepoints[str(c)] == names[1]]
    if len(base) != len(follow):
        raise VolsegError(None, f"each timepoint needs the same channels: {names[0]} has {len(base)}, "
                          f"{names[1]} has {len(follow)}")
    return base, follow


def plan_outputs(labels: dict) -> dict:
    """The four sigmoid outputs (SegHeD order) as the plan's ``outputs``."""
    stable, new, vanishing = change_values(labels)
    return {"mode": "sigmoid", "num_outputs": 4,
            "regions": {"baseline_lesions": sorted([stable, vanishing]), "followup_lesions": sorted([stable, new]),
                        "new_lesions": [new], "vanishing_lesions": [vanishing]}}


def default_settings(fingerprint: dict) -> dict:
    """The plan's ``longitudinal`` section: fusion, consistency, change augmentation, sampling, matching."""
    ds = fingerprint["dataset"]
    base, follow = timepoint_channels(ds["channel_names"], ds.get("timepoints"))
    stable, new, vanishing = change_values(ds["labels"])
    return {
        "baseline_channels": base, "followup_channels": follow,
        "fusion": "difference",
        "consistency_weight": 1.0,
        "output_prior": 0.01,
        "augmentation": {"timepoint_swap": {"p": 0.5},
                         "lesion_paste": {"p": 0.3, "p_new": 0.5, "min_voxels": 4},
                         "misregistration": {"p": 0.3, "max_shift_voxels": 1.0, "max_rotation_deg": 1.5}},
        "class_weights": {str(stable): 1.0, str(new): 2.0, str(vanishing): 2.0},
        "matching": {"threshold": 0.5, "min_volume_mm3": 0.0, "min_match": 0.1, "connectivity": 6,
                     "change_heads": True},
    }


def set_output_prior(net: torch.nn.Module, prior: float | None) -> None:
    """Start every sigmoid head at probability ``prior`` (bias ``−log((1 − prior) / prior)``, as
    RetinaNet's classifier): lesions fill a tiny share of the voxels, and from 0.5 the first
    hundreds of iterations would only learn that the background is background."""
    if not prior:
        return
    bias = -float(np.log((1 - prior) / prior))
    for name, module in net.named_modules():
        if name.endswith("seg_layers"):
            for layer in module:
                torch.nn.init.constant_(layer.bias, bias)


class ConsistencyLoss(torch.nn.Module):
    """Mean hinge of ``new ⊆ follow-up ∖ baseline`` and ``vanishing ⊆ baseline ∖ follow-up``.

    On sigmoid probabilities (B, 4, z, y, x) in SegHeD order:
    ``relu(p_new − p_fu) + relu(p_new + p_base − 1) + relu(p_van − p_base) + relu(p_van + p_fu − 1)``,
    averaged over voxels; 0 exactly when the four maps are consistent binary masks.
    """

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        pb, pf, pn, pv = probs.unbind(1)
        return (torch.relu(pn - pf) + torch.relu(pn + pb - 1) + torch.relu(pv - pb) + torch.relu(pv + pf - 1)).mean()


class LongitudinalLoss(torch.nn.Module):
    """``{"<segmentation loss>": Dice + BCE over the four outputs, "consistency": w · ConsistencyLoss}``."""

    def __init__(self, name: str, base: torch.nn.Module, weight: float) -> None:
        super().__init__()
        self.name, self.base, self.weight, self.consistency = name, base, float(weight), ConsistencyLoss()

    def forward(self, outputs, targets) -> dict[str, torch.Tensor]:
        full = outputs[0] if isinstance(outputs, (list, tuple)) else outputs
        terms = {self.name: self.base(outputs, targets)}
        if self.weight > 0:
            terms["consistency"] = self.weight * self.consistency(torch.sigmoid(full.float()))
        return terms


class LesionMatching:
    """The threshold, minimum lesion size and matching overlap of :func:`classify_lesions`, chosen on
    the held-out fold's probabilities (``MODEL/lesion_matching.json``) to maximise the sum of the
    pooled lesion-wise F1 of new, vanishing and all lesions (MSSEG-2 matching)."""

    name = "lesion_matching"
    GRID = {"threshold": [0.3, 0.4, 0.5, 0.6], "min_volume_mm3": [0.0, 10.0, 20.0, 40.0],
            "min_match": [0.05, 0.1, 0.25, 0.5], "change_heads": [False, True]}

    def __init__(self, plans: dict, defaults: dict) -> None:
        self.plans, self.defaults = plans, defaults

    def _cases(self, validation_dirs: list[Path]) -> list[tuple[np.ndarray, np.ndarray, tuple]]:
        from volseg.io.nifti import read_image

        ending = self.plans["dataset"].get("file_ending", ".nii.gz")
        cases = []
        for folder in validation_dirs:
            for ref in sorted((folder / "reference").glob(f"*{ending}")):
                maps = folder / "maps" / f"{ref.name[:-len(ending)]}_probabilities.npz"
                if maps.is_file():
                    with np.load(maps) as z:
                        probs = z["probabilities"]
                    label, geometry = read_image(ref)
                    cases.append((probs, label.astype(np.int16), geometry.spacing))
        return cases

    def fit(self, validation_dirs: list[Path]) -> dict | None:
        import itertools

        from volseg.evaluation.lesions import detection_scores, lesion_metrics
        from volseg.postprocessing.longitudinal import MatchingParams, classify_lesions

        cases = self._cases(validation_dirs)
        if not cases:
            return None
        stable, new, vanishing = change_values(self.plans["dataset"]["labels"])
        kinds = {"new": (new,), "vanishing": (vanishing,), "all": (stable, new, vanishing)}
        best, best_score, table = None, -1.0, []
        base = MatchingParams.from_dict(self.defaults)
        for t, vol, match, heads in itertools.product(*self.GRID.values()):
            params = MatchingParams(t, vol, match, base.connectivity, heads)
            sums = {k: np.zeros(4) for k in kinds}
            for probs, ref, spacing in cases:
                labels, _ = classify_lesions(probs, spacing, params)
                for k, values in kinds.items():
                    m = lesion_metrics(np.isin(labels, values), np.isin(ref, values), spacing)
                    sums[k] += [m["n_ref"], m["n_pred"], m["tp_ref"], m["tp_pred"]]
            f1 = {k: detection_scores(*map(int, v), 0.0)["f1"] for k, v in sums.items()}
            score = float(sum(0.0 if np.isnan(v) else v for v in f1.values()))
            table.append({**params.to_dict(), **{f"f1_{k}": None if np.isnan(v) else round(v, 4) for k, v in f1.items()}})
            if score > best_score + 1e-9:
                best, best_score = params, score
        return {**best.to_dict(), "score": round(best_score, 4), "num_cases": len(cases), "grid": self.GRID,
                "objective": "pooled lesion-wise F1 of new + vanishing + all lesions", "table": table}

    def apply(self, prediction: CasePrediction, params: dict, spacing: Sequence[float]) -> CasePrediction:
        from volseg.postprocessing.longitudinal import MatchingParams, classify_lesions

        prediction.labels, prediction.lesions = classify_lesions(prediction.maps["regions"], spacing,
                                                                 MatchingParams.from_dict(params))
        return prediction


@register_task("longitudinal")
class LongitudinalTask(SegmentationTask):
    """Lesions at two timepoints and their change (see the module docstring).

    Args:
        plans: The plan (``outputs`` from :func:`plan_outputs`; each configuration has a
            ``longitudinal`` section from :func:`default_settings`).
    """

    @classmethod
    def plan_outputs(cls, labels: dict) -> dict:
        return plan_outputs(labels)

    @classmethod
    def configure(cls, fingerprint: dict, config: dict) -> dict:
        config["longitudinal"] = default_settings(fingerprint)
        if config.get("device") == "cpu":
            config["training"].update(foreground_oversampling=CPU_FOREGROUND_OVERSAMPLING,
                                      optimizer=dict(CPU_OPTIMIZER))
        return config

    def prepare(self, config: dict) -> None:
        self.config = config
        self.settings = config["longitudinal"]
        if self.settings["fusion"] not in FUSIONS:
            raise VolsegError(None, f"longitudinal.fusion must be one of {', '.join(FUSIONS)}, "
                              f"found {self.settings['fusion']!r}")

    def build_network(self, config: dict) -> torch.nn.Module:
        from volseg.networks import from_plans
        from volseg.networks.factory import network_kwargs
        from volseg.networks.longitudinal import DifferenceInput, SiameseUNet

        s = config["longitudinal"]
        n_in, n_out = len(self.plans["dataset"]["channel_names"]), self.outputs["num_outputs"]
        base, follow = s["baseline_channels"], s["followup_channels"]
        if s["fusion"] == "siamese":
            if config["network"]["architecture"] != "unet":
                raise VolsegError(None, 'longitudinal.fusion "siamese" needs network.architecture "unet"')
            net = SiameseUNet(baseline=base, followup=follow, in_channels=n_in, num_outputs=n_out,
                              **network_kwargs(config["network"]))
        elif s["fusion"] == "difference":
            net = DifferenceInput(from_plans(config["network"], n_in + len(follow), n_out), base, follow)
        else:
            net = from_plans(config["network"], n_in, n_out)
        set_output_prior(net, s.get("output_prior"))
        return net

    def loader_options(self, config: dict) -> dict:
        """Class label maps; forced samples pick stable / new / vanishing with the plan's odds."""
        weights = config["longitudinal"].get("class_weights") or {}
        return {"labels": "classes", "random_offset": False,
                "class_weights": {int(k): float(v) for k, v in weights.items()} or None}

    def targets(self, config: dict, training: bool = True):
        """Change augmentation (training only), then the deep-supervision label targets."""
        from batchgenerators.transforms.abstract_transforms import Compose

        from volseg.data.augmentation import DeepSupervisionTargets
        from volseg.data.change import LesionPaste, Misregistration, TimepointSwap

        steps = []
        s = config["longitudinal"]
        if training:
            aug, base, follow = s["augmentation"], s["baseline_channels"], s["followup_channels"]
            if aug["timepoint_swap"]["p"] > 0:
                steps.append(TimepointSwap(base, follow, **aug["timepoint_swap"]))
            if aug["lesion_paste"]["p"] > 0:
                steps.append(LesionPaste(base, follow, **aug["lesion_paste"]))
            if aug["misregistration"]["p"] > 0:
                steps.append(Misregistration(follow, **aug["misregistration"]))
        steps.append(DeepSupervisionTargets(ds_scales(config)))
        return Compose(steps)

    def loss(self, config: dict) -> LongitudinalLoss:
        named = super().loss(config)
        return LongitudinalLoss(named.name, named.loss, config["longitudinal"]["consistency_weight"])

    def validation_options(self) -> dict:
        """Held-out predictions keep their probabilities (the lesion matching and ``volseg calibrate``
        are fitted on them) and their uncertainty maps."""
        return {"save_probabilities": True, "save_uncertainty": True}

    def restore(self, result, props: dict, geometry, options) -> CasePrediction:
        """The four maps on the input grid, lesions matched with the plan's default settings."""
        from volseg.postprocessing.longitudinal import MatchingParams, classify_lesions

        _, probs, entropy, maps = self.dense_on_input_grid(result, props, geometry, options, True)
        labels, lesions = classify_lesions(probs, geometry.spacing,
                                           MatchingParams.from_dict(self.config["longitudinal"]["matching"]))
        return CasePrediction(labels=labels, probabilities=probs if options.save_probabilities else None,
                              entropy=entropy, lesions=lesions, maps={"regions": probs, **maps})

    def conformal_targets(self, probabilities: np.ndarray, by_class: bool) -> dict[str, tuple[np.ndarray, tuple]]:
        """One target, all lesions: the largest of the four maps (what the matching thresholds),
        against the reference's stable, new and vanishing lesions."""
        if by_class:
            raise VolsegError(None, "--by class is not available for longitudinal models: calibrate all lesions "
                              "(optionally --by size)")
        return {"all": (probabilities.max(axis=0).astype(np.float32), change_values(self.plans["dataset"]["labels"]))}

    def apply_conformal(self, prediction: CasePrediction, conformal: dict, calibration: dict,
                        spacing: Sequence[float]) -> CasePrediction:
        """Lesions matched at the calibrated threshold, with no minimum size and without letting
        the change maps remove voxels, so that the lesion masks are exactly the calibrated set."""
        from volseg.postprocessing.longitudinal import MatchingParams, classify_lesions

        plain = prediction.labels
        fitted = calibration.get("lesion_matching") or self.config["longitudinal"]["matching"]
        params = MatchingParams(threshold=float(conformal["thresholds"]["all"]), min_volume_mm3=0.0,
                                min_match=fitted.get("min_match", 0.1), connectivity=fitted.get("connectivity", 6),
                                change_heads=False)
        prediction.labels, prediction.lesions = classify_lesions(prediction.maps["regions"], spacing, params)
        prediction.maps["possible"] = ((prediction.labels > 0) & (plain == 0)).astype(np.uint8)
        return prediction

    def export(self, out_dir: Path, case_id: str, ending: str, geometry, prediction: CasePrediction) -> list[Path]:
        """``CASE_lesions.csv``, then the maps and ``CASE<ending>`` (the label map, written last)."""
        from volseg.postprocessing.longitudinal import write_lesion_table

        table = Path(out_dir) / f"{case_id}_lesions.csv"
        write_lesion_table(table, prediction.lesions or [], geometry)
        return [table, *super().export(out_dir, case_id, ending, geometry, prediction)]

    def calibrators(self) -> list[LesionMatching]:
        """The lesion matching, from the bound configuration's defaults (the plan's default one before binding)."""
        config = self.config or self.plans["configurations"][self.plans["default_configuration"]]
        return [LesionMatching(self.plans, config["longitudinal"]["matching"])]
