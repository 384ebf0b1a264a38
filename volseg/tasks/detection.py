"""Object detection with a Retina U-Net: boxes in world coordinates, trained from instance maps.

The second implementation of :class:`~volseg.tasks.base.Task`. Planning adds anchors and
detection levels searched on the CPU (:mod:`volseg.planning.anchors`); training reads the
instance maps, samples a random instance at a random offset in the patch, computes the boxes
after augmentation and optimizes segmentation + classification + box terms; the validation
score is the best detection F1 over score thresholds on validation patches. Prediction
decodes boxes per tile and member, fuses them by weighted box clustering, and writes
``CASE_boxes.json`` (voxel boxes and world centres), one ``candidates.csv`` and the
segmentation head's label map.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from volseg.errors import PlanError
from volseg.tasks.base import CasePrediction, register_task
from volseg.tasks.segmentation import SegmentationTask, ds_scales

ANCHORS_PER_LEVEL = 3
DETECTION_FOREGROUND_OVERSAMPLING = 0.5
# The short CPU schedule: every sample holds an instance, and AdamW, which learns the heads far
# faster early on (lung demo, 100 iterations: validation detection F1 0.35 with AdamW at 1e-3
# against 0.02 with SGD at 0.01 and momentum 0.99, both with every sample forced).
CPU_FOREGROUND_OVERSAMPLING = 1.0
CPU_OPTIMIZER = {"name": "adamw", "lr": 1e-3, "weight_decay": 1e-4}
# Heads of the CPU configuration: one 16-channel conv per tower instead of two of at least 32.
# With two 32-channel convs the heads cost about half as much again as the whole U-Net on the
# lung demo's 3d_cpu patch (OpenVINO f32: 0.44 s against 0.23 s per tile batch). Lung demo,
# 400 iterations: test CPM 0.67 (16 × 1) against 0.57 (32 × 2), held-out CPM 0.77 against 0.84
# (6 test and 6 held-out nodules, so within the noise of either).
CPU_HEAD = {"head_channels": 16, "head_convs": 1}
HEAD_CONVS = 2
# Candidates per tile and mirroring: the anchors of the cells whose score peaks in their 3³
# neighbourhood, then the 100 highest. Lung demo, one 400-iteration model, 8 test cases at the
# IoUs swept for the plain top 1000 / 4 held-out cases at the plan's IoUs: CPM 0.690 / 0.671 with
# the top 1000 of every cell; with peaks 0.738 / 0.800 (top 1000), 0.714 / 0.800 (300), 0.714 /
# 0.771 (200), 0.667 / 0.786 (100), and the box work per case 5.3, 1.4, 1.0 (machine shared) and 0.7 s against
# 3.7 s (top 1000 of every cell: NMS keeps more of the distinct peaks, so WBC has more to fuse).
PEAK_WINDOW = 3
TOP_K_PER_TILE = 100


def with_heads(network: dict, detection_levels: list[int], device: str) -> dict:
    """A plan's U-Net ``network`` as a ``retina_unet`` with heads on ``detection_levels``: as wide
    as the narrowest level within [32, 128] and :data:`HEAD_CONVS` deep, or :data:`CPU_HEAD` for
    the CPU configuration (``device`` "cpu")."""
    widths = [network["features_per_stage"][i] for i in detection_levels]
    heads = (dict(CPU_HEAD) if device == "cpu" else
             {"head_channels": int(min(128, max(32, min(widths)))), "head_convs": HEAD_CONVS})
    return {**network, "architecture": "retina_unet", "detection_levels": [int(v) for v in detection_levels],
            "num_anchors": ANCHORS_PER_LEVEL, **heads}


def detection_defaults(anchors: dict) -> dict:
    """The ``detection`` section of a configuration around planned ``anchors``; the matcher and
    sampler settings are those of :mod:`volseg.detection.matching` (its ``POSITIVE_FRACTION`` is
    the share of positive anchors, unrelated to ``training.foreground_oversampling``)."""
    from volseg.detection import matching

    return {
        "anchors": {"levels": [{"stride": lv["stride"], "shapes": lv["shapes"]} for lv in anchors["levels"]],
                    "mean_best_iou": anchors["mean_best_iou"], "num_boxes": anchors["num_boxes"]},
        "matcher": {"num_candidates": matching.NUM_CANDIDATES},
        "sampler": {"batch_size_per_image": matching.BATCH_SIZE_PER_IMAGE,
                    "positive_fraction": matching.POSITIVE_FRACTION, "min_neg": matching.MIN_NEGATIVES,
                    "pool_size": matching.POOL_SIZE},
        "loss": {"cls": "bce", "seg_weight": 1.0},
        "inference": {"score_floor": 0.01, "peak_window": PEAK_WINDOW, "top_k_per_tile": TOP_K_PER_TILE,
                      "nms_iou": 0.5, "wbc_iou": 0.2, "max_detections": 100, "score_threshold": 0.0,
                      "min_size_mm": 0.0},
    }


@register_task("detection")
class DetectionTask(SegmentationTask):
    """Retina U-Net detection of the plan's foreground classes (instances of an instance map).

    Reuses the segmentation task's dense parts for the segmentation head.

    Args:
        plans: The plan; ``outputs`` are softmax over background + classes.
    """

    name = "detection"
    score_name = "detection F1"

    def __init__(self, plans: dict) -> None:
        super().__init__(plans)
        self.num_classes = int(self.outputs["num_outputs"]) - 1
        self.class_names = [k for k, v in sorted(plans["dataset"]["labels"].items(), key=lambda kv: kv[1])
                            if isinstance(v, int) and v > 0]

    @classmethod
    def configure(cls, fingerprint: dict, config: dict) -> dict:
        """Anchors and detection levels from the training instances; a ``retina_unet`` network."""
        from volseg.planning.anchors import determine_anchors

        try:
            anchors = determine_anchors(fingerprint, config["spacing"], config["network"]["strides"],
                                        ANCHORS_PER_LEVEL)
        except ValueError as e:
            raise PlanError(None, f"detection planning: {e}") from None
        net = with_heads(config["network"], anchors["detection_levels"], config.get("device", "cuda"))
        config = {**config, "network": net, "detection": detection_defaults(anchors)}
        training = dict(config["training"])
        training["loss"] = {**training["loss"], "ignore_label": -1}
        training["foreground_oversampling"] = DETECTION_FOREGROUND_OVERSAMPLING
        if config.get("device") == "cpu":
            training.update(foreground_oversampling=CPU_FOREGROUND_OVERSAMPLING, optimizer=dict(CPU_OPTIMIZER))
        config["training"] = training
        return config

    @classmethod
    def estimate_network(cls, fingerprint: dict, spacing: list[float], network: dict, device: str) -> dict:
        """The candidate U-Net with the heads :meth:`configure` gives it, on the detection levels
        the training boxes choose for its strides (no anchor search: the levels decide the cost)."""
        from volseg.planning.anchors import choose_detection_levels, instance_extents_mm

        try:
            extents_vox = instance_extents_mm(fingerprint) / np.asarray(spacing, dtype=float)
        except ValueError as e:
            raise PlanError(None, f"detection planning: {e}") from None
        return with_heads(network, choose_detection_levels(network["strides"], extents_vox), device)

    def loader_options(self, config: dict) -> dict:
        """Training reads the instance maps; a forced sample puts its instance anywhere mid-patch."""
        return {"labels": "instances", "random_offset": True}

    def targets(self, config: dict, training: bool = True):
        from batchgenerators.transforms.abstract_transforms import Compose

        from volseg.detection.targets import DetectionTargets
        from volseg.detection.training import PackDetectionTargets

        return Compose([DetectionTargets(ds_scales(config), ignore_label=-1), PackDetectionTargets()])

    def anchors(self, config: dict) -> tuple[torch.Tensor, list[int]]:
        """(N, 6) anchors of the training patch and the anchor count of each level."""
        from volseg.networks.retina_unet import anchor_boxes, level_shapes

        plan = config["detection"]["anchors"]
        shapes = level_shapes(config["patch_size"], [lv["stride"] for lv in plan["levels"]])
        per_level = [int(np.prod(s)) * len(lv["shapes"]) for s, lv in zip(shapes, plan["levels"])]
        return anchor_boxes(config["patch_size"], plan), per_level

    def loss(self, config: dict):
        from volseg.detection.losses import DetectionLoss
        from volseg.detection.matching import AnchorMatcher, HardNegativeSampler
        from volseg.detection.training import RetinaUNetLoss
        from volseg.training.losses import build_loss

        det = config["detection"]
        seg = build_loss(config["training"]["loss"], mode="softmax", deep_supervision=ds_scales(config) is not None)
        matcher = AnchorMatcher(num_candidates=det["matcher"]["num_candidates"],
                                anchors_per_location=config["network"]["num_anchors"])
        det_loss = DetectionLoss(self.num_classes, matcher=matcher, sampler=HardNegativeSampler(**det["sampler"]),
                                 cls_loss=det["loss"]["cls"])
        anchors, per_level = self.anchors(config)
        return RetinaUNetLoss(seg, det_loss, anchors, per_level, config["network"]["num_anchors"],
                              det["loss"]["seg_weight"])

    def prepare(self, config: dict) -> None:
        """Bind the configuration: its anchors decode validation boxes, its settings post-process."""
        from volseg.detection.coder import BoxCoder

        super().prepare(config)
        self._val = (self.anchors(config)[0], config["network"]["num_anchors"], BoxCoder())

    def batch_stats(self, outputs, targets) -> torch.Tensor:
        """Summed (tp, fp, fn) per score threshold of decoded boxes against the patch's boxes."""
        from volseg.detection.training import decode_top, detection_counts
        from volseg.networks.retina_unet import flatten_level_outputs

        anchors, num_anchors, coder = self._val
        cls, box = flatten_level_outputs(outputs["cls"], outputs["box"], num_anchors)
        decoded = decode_top(cls, box, anchors.to(box.device), coder)
        return detection_counts(decoded, [b.cpu() for b in targets["boxes"]])

    def score(self, stats: torch.Tensor) -> tuple[float, dict]:
        from volseg.detection.training import best_f1

        return best_f1(stats)

    def fusion_ious(self, config: dict, options, calibration: dict | None, calibrated: bool) -> tuple[float, float]:
        """``(nms_iou, wbc_iou)`` the boxes are fused with: the detection sweep's when the
        prediction is post-processed; otherwise (the held-out fold, ``--no-postprocessing``) and
        for the calibrated outputs, whose threshold was calibrated on held-out boxes fused with
        them, the plan's."""
        inf = config["detection"]["inference"]
        sweep = (calibration or {}).get("detection_sweep") or {}
        if options.postprocess and not calibrated:
            return sweep.get("nms_iou", inf["nms_iou"]), sweep.get("wbc_iou", inf["wbc_iou"])
        return inf["nms_iou"], inf["wbc_iou"]

    def aggregator(self, config: dict, props: dict, options, device: torch.device, calibration: dict | None = None):
        """Boxes per tile and member, fused at the end (:meth:`fusion_ious`); the segmentation
        head stitched densely. With ``options.calibrated_out`` and other IoU thresholds for the
        calibrated outputs, every tile's boxes are recorded, so that :meth:`calibrated_copy`
        can fuse them again."""
        from volseg.detection.aggregation import BoxAggregator
        from volseg.detection.coder import BoxCoder

        inf = config["detection"]["inference"]
        nms_iou, wbc_iou = self.fusion_ious(config, options, calibration, options.calibrated)
        fuse_again = (getattr(options, "calibrated_out", None) is not None
                      and self.fusion_ious(config, options, calibration, True) != (nms_iou, wbc_iou))
        dense = super().aggregator(config, props, options, device, calibration)
        return BoxAggregator(config["detection"]["anchors"], config["patch_size"], self.num_classes,
                             config["network"]["num_anchors"], coder=BoxCoder(), score_floor=inf["score_floor"],
                             **{k: inf[k] for k in ("peak_window", "top_k_per_tile") if k in inf},  # else the aggregator's
                             nms_iou=nms_iou, wbc_iou=wbc_iou, max_detections=inf["max_detections"],
                             sigma_scale=config["inference"]["gaussian_sigma_scale"], dense=dense,
                             gaussian_center=config["inference"].get("gaussian_center", "middle"),
                             record=getattr(options, "save_candidates", False) or fuse_again)

    def restore(self, result, props: dict, geometry, options) -> CasePrediction:
        """Boxes in voxels of the input image; the segmentation head's labels on the input grid."""
        from volseg.detection.export import boxes_to_input_grid

        prediction = super().restore(result.dense, props, geometry, options)
        boxes = boxes_to_input_grid(np.asarray(result.boxes, dtype=np.float64), props)
        prediction.boxes = {"boxes": boxes, "scores": np.asarray(result.scores, dtype=np.float64),
                            "classes": np.asarray(result.classes, dtype=np.int64)}
        if result.candidates is not None:
            prediction.maps["candidates"] = {**result.candidates, "props": props}
        return prediction

    def postprocess(self, prediction: CasePrediction, calibration: dict, spacing: Sequence[float]) -> CasePrediction:
        """Drop boxes below the score threshold and minimum size (the sweep's, else the plan's)."""
        from volseg.detection.sweep import apply_box_rules

        inf = self.config["detection"]["inference"]
        params = calibration.get("detection_sweep") or {"score_threshold": inf["score_threshold"],
                                                        "min_size_mm": inf["min_size_mm"]}
        prediction.boxes = apply_box_rules(prediction.boxes, params, spacing)
        return prediction

    conformal_kind = "boxes"

    def validation_options(self) -> dict:
        """Held-out boxes (``candidates.csv``, calibrated on) with their mean uncertainty, and every
        tile's boxes before NMS (``CASE_candidates.npz``, on which the sweep replays NMS and WBC)."""
        return {"save_uncertainty": True, "save_candidates": True}

    def apply_conformal(self, prediction: CasePrediction, conformal: dict, calibration: dict,
                        spacing: Sequence[float]) -> CasePrediction:
        """Keep the boxes scoring at least the calibrated threshold (no size limit: the
        calibration saw every box)."""
        from volseg.detection.sweep import apply_box_rules

        prediction.boxes = apply_box_rules(prediction.boxes, {"score_threshold": conformal["thresholds"]["all"],
                                                              "min_size_mm": 0.0}, spacing)
        return prediction

    def calibrated_copy(self, prediction: CasePrediction, conformal: dict, calibration: dict,
                        spacing: Sequence[float], options) -> CasePrediction:
        """The calibrated boxes of a restored prediction, as a new prediction that shares its
        label map and maps. When the calibrated outputs take other IoU thresholds than the
        plain ones (:meth:`fusion_ious`), the recorded tile boxes are fused again with them
        (:func:`~volseg.detection.replay.replay_case`, which gives exactly what an aggregation
        with those thresholds gives). The recorded boxes stay in ``prediction`` only when
        ``options.save_candidates``."""
        from volseg.detection.export import boxes_to_input_grid
        from volseg.detection.replay import replay_case

        maps = dict(prediction.maps)
        record = maps.pop("candidates", None)
        if not getattr(options, "save_candidates", False):
            prediction.maps.pop("candidates", None)
        copy = replace(prediction, maps=maps, boxes=dict(prediction.boxes))
        plain = self.fusion_ious(self.config, options, calibration, False)
        wanted = self.fusion_ious(self.config, options, calibration, True)
        if wanted != plain:
            fused = replay_case(record, *wanted)
            boxes = np.asarray(fused.boxes, dtype=np.float64).reshape(-1, 6)
            copy.boxes = {"boxes": boxes_to_input_grid(boxes, record["props"]),
                          "scores": np.asarray(fused.scores, dtype=np.float64),
                          "classes": np.asarray(fused.labels, dtype=np.int64)}
        return self.apply_conformal(copy, conformal, calibration, spacing)

    def export(self, out_dir: Path, case_id: str, ending: str, geometry, prediction: CasePrediction) -> list[Path]:
        """The segmentation head's label map, then ``CASE_boxes.json`` (written last)."""
        from volseg.detection.export import box_uncertainty, case_boxes_record, write_case_boxes

        written = super().export(out_dir, case_id, ending, geometry, prediction)
        b = prediction.boxes
        maps = {"entropy": prediction.entropy, **{k: prediction.maps[k] for k in ("expected_entropy",
                                                                                  "mutual_information")
                                                  if prediction.maps.get(k) is not None}}
        unc = box_uncertainty(b["boxes"], maps) if prediction.entropy is not None else None
        record = case_boxes_record(case_id, b["boxes"], b["scores"], b["classes"], geometry, self.class_names, unc)
        if prediction.maps.get("candidates") is not None:
            from volseg.detection.candidates import save_candidates

            cand = prediction.maps["candidates"]
            written.append(save_candidates(out_dir, case_id, cand, cand["props"], geometry))
        written.append(write_case_boxes(out_dir, case_id, record))
        return written

    def done_file(self, out_dir: Path, case_id: str, ending: str) -> Path:
        return Path(out_dir) / f"{case_id}_boxes.json"

    def finish_folder(self, out_dir: Path, case_ids: list[str]) -> None:
        """One LUNA16-style ``candidates.csv`` for every case predicted into ``out_dir``."""
        from volseg.detection.export import write_candidates_csv

        write_candidates_csv(out_dir)

    def evaluate_validation(self, pred_dir: Path, dataset_root: Path, case_ids: list[str]) -> dict:
        """LUNA16 FROC / CPM of the held-out ``candidates.csv`` against findings read from the
        instance maps (ignore instances as excluded findings), written to ``pred_dir/reference``."""
        from volseg.detection.reference import write_references
        from volseg.evaluation.detection import evaluate_detection_csv

        ending = self.plans["dataset"].get("file_ending", ".nii.gz")
        paths = write_references(dataset_root / "labelsTr", case_ids, pred_dir / "reference", ending)
        return evaluate_detection_csv(pred_dir / "candidates.csv", paths["annotations"], pred_dir / "evaluation",
                                      excluded_csv=paths["excluded"], scans=paths["scans"])

    def calibrators(self) -> list:
        from volseg.detection.sweep import DetectionSweep

        return [DetectionSweep(self.plans)]
