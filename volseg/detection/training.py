"""Retina U-Net training parts: the packed targets, the combined loss and the validation score.

* :class:`PackDetectionTargets` gathers what :class:`~volseg.detection.targets.DetectionTargets`
  writes into one ``target`` dict (``seg``, ``boxes``, ``classes``, ``ignore``), the form the
  trainer moves to the device and hands to the loss.
* :class:`RetinaUNetLoss`: named terms ``seg`` (Dice + CE with deep supervision, ignore
  regions excluded), ``cls`` and ``box`` (:class:`~volseg.detection.losses.DetectionLoss`).
* :func:`detection_counts` / :func:`best_f1`: summable (tp, fp, fn) of decoded boxes against
  the patch's boxes at IoU ≥ 0.1 over a ladder of score thresholds, and the best F1 over the
  ladder: the validation score that picks the best checkpoint.

Boxes are (z0, y0, x0, z1, y1, x1), voxels of the patch, half-open.
"""

from __future__ import annotations

from typing import Sequence

import torch
from batchgenerators.transforms.abstract_transforms import AbstractTransform
from torch import nn

SCORE_THRESHOLDS = tuple(round(0.1 * i, 1) for i in range(1, 10))
MATCH_IOU = 0.1
VALIDATION_TOP_K = 100


class PackDetectionTargets(AbstractTransform):
    """``target``, ``boxes``, ``box_classes``, ``ignore_boxes`` → one ``target`` dict."""

    def __call__(self, **batch):
        batch["target"] = {"seg": batch.pop("target"), "boxes": batch.pop("boxes"),
                           "classes": batch.pop("box_classes"), "ignore": batch.pop("ignore_boxes")}
        return batch


class RetinaUNetLoss(nn.Module):
    """Segmentation + classification + box regression of a Retina U-Net.

    Args:
        seg_loss: Loss of the segmentation output(s) against ``targets["seg"]``.
        det_loss: :class:`~volseg.detection.losses.DetectionLoss`.
        anchors: float32 (N, 6) anchors of the training patch (``anchor_boxes``), in the
            network's flattened order.
        anchors_per_level: Anchors per detection level, summing to N.
        num_anchors: Anchors per feature cell.
        seg_weight: Weight of the segmentation term.

    Shape:
        outputs ``{"seg", "cls", "box"}`` of :class:`~volseg.networks.retina_unet.RetinaUNet`;
        targets ``{"seg", "boxes", "classes", "ignore"}`` → ``{"seg", "cls", "box"}`` scalars.
    """

    def __init__(self, seg_loss: nn.Module, det_loss: nn.Module, anchors: torch.Tensor,
                 anchors_per_level: Sequence[int], num_anchors: int, seg_weight: float = 1.0) -> None:
        super().__init__()
        self.seg_loss, self.det_loss = seg_loss, det_loss
        self.register_buffer("anchors", anchors.float(), persistent=False)
        self.anchors_per_level, self.num_anchors, self.seg_weight = list(anchors_per_level), num_anchors, seg_weight

    def forward(self, outputs: dict, targets: dict) -> dict[str, torch.Tensor]:
        from volseg.networks.retina_unet import flatten_level_outputs

        cls, box = flatten_level_outputs(outputs["cls"], outputs["box"], self.num_anchors)
        anchors = self.anchors.to(box.device)
        terms = self.det_loss(cls, box, anchors, self.anchors_per_level, targets["boxes"], targets["classes"],
                              targets["ignore"])
        return {"seg": self.seg_weight * self.seg_loss(outputs["seg"], targets["seg"]), **terms}


@torch.no_grad()
def decode_top(cls: torch.Tensor, box: torch.Tensor, anchors: torch.Tensor, coder,
               top_k: int = VALIDATION_TOP_K) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per image, the ``top_k`` anchors by best class probability, decoded: [(boxes (k, 6), scores (k,))]."""
    probs = torch.sigmoid(cls.float()).amax(dim=2)  # (B, N)
    k = min(top_k, probs.shape[1])
    scores, idx = probs.topk(k, dim=1)
    out = []
    for b in range(cls.shape[0]):
        out.append((coder.decode(box[b, idx[b]].float(), anchors[idx[b]]), scores[b]))
    return out


def _matched(pred: torch.Tensor, gt: torch.Tensor) -> int:
    """Reference boxes hit by a prediction at IoU ≥ :data:`MATCH_IOU`, greedily in prediction order."""
    from volseg.detection.boxes import box_iou

    if len(pred) == 0 or len(gt) == 0:
        return 0
    iou = torch.as_tensor(box_iou(pred.cpu(), gt.cpu()))
    free = torch.ones(len(gt), dtype=torch.bool)
    hits = 0
    for row in iou:
        cand = (row >= MATCH_IOU) & free
        if cand.any():
            free[int(torch.argmax(torch.where(cand, row, torch.full_like(row, -1.0))))] = False
            hits += 1
    return hits


@torch.no_grad()
def detection_counts(decoded: list[tuple[torch.Tensor, torch.Tensor]], gt_boxes: Sequence[torch.Tensor],
                     thresholds: Sequence[float] = SCORE_THRESHOLDS, nms_iou: float = 0.5) -> torch.Tensor:
    """float64 (T, 3) summed (tp, fp, fn) over the images, one row per score threshold.

    Predictions of each image are thresholded, suppressed (NMS at ``nms_iou``) and matched
    one-to-one to the reference boxes at IoU ≥ :data:`MATCH_IOU`.
    """
    from volseg.detection.clustering import nms

    counts = torch.zeros(len(thresholds), 3, dtype=torch.float64)
    for (boxes, scores), gt in zip(decoded, gt_boxes):
        for t, thr in enumerate(thresholds):
            keep = scores >= thr
            b, s = boxes[keep], scores[keep]
            if len(b):
                order = torch.as_tensor(nms(b.cpu(), s.cpu(), nms_iou), dtype=torch.long)
                b = b.cpu()[order]
            hits = _matched(b, gt)
            counts[t] += torch.tensor([hits, len(b) - hits, len(gt) - hits], dtype=torch.float64)
    return counts


def best_f1(counts: torch.Tensor, thresholds: Sequence[float] = SCORE_THRESHOLDS) -> tuple[float, dict]:
    """Best F1 = 2tp / (2tp + fp + fn) over the thresholds (NaN without any box on either side)."""
    tp, fp, fn = counts[:, 0], counts[:, 1], counts[:, 2]
    denom = 2 * tp + fp + fn
    if float(denom.max()) == 0:
        return float("nan"), {"detection_f1": [], "best_threshold": None}
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.zeros_like(denom))
    best = int(torch.argmax(f1))
    return float(f1[best]), {"detection_f1": [round(float(v), 4) for v in f1], "best_threshold": thresholds[best]}
