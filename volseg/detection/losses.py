"""Detection loss of a Retina U-Net head: anchor classification and box regression.

Boxes and anchors are (z0, y0, x0, z1, y1, x1) in voxels, half-open (see
:mod:`volseg.detection.boxes`); box deltas are (dz, dy, dx, dd, dh, dw) (see
:mod:`volseg.detection.coder`).

Per image, :class:`~volseg.detection.matching.AnchorMatcher` matches the anchors to the
ground-truth boxes (ATSS, ignore boxes), and
:class:`~volseg.detection.matching.HardNegativeSampler` draws the positives and the hard
negatives (pooled by the detached maximum foreground probability) that the
classification term sees. Then, over the whole batch, with ``P`` the number of sampled
positives clamped to at least 1:

* ``cls``: sigmoid binary cross-entropy or sigmoid focal loss (MONAI's), one sigmoid per
  foreground class (no background channel), summed over the sampled anchors and classes,
  divided by ``P``; a positive's target is the one-hot of its box's class, a negative's is 0;
* ``box``: ``1 - GIoU`` (MONAI's ``box_pair_giou``, 3D, differentiable) between the decoded
  boxes of the sampled positives and their matched boxes, summed, divided by ``P``.

Both sums start from an empty slice of the network output, so a batch without positives
(or without any sampled anchor) gives exactly 0 with a zero gradient that still reaches
every parameter of both heads, which DDP requires; unlike ``0 * output.sum()``, that zero
stays 0 when an output is not finite.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from volseg.detection.coder import BoxCoder
from volseg.detection.matching import AnchorMatcher, HardNegativeSampler, anchor_labels

CLS_LOSSES = ("bce", "focal")
DEFAULT_WEIGHTS = {"cls": 1.0, "box": 1.0}


class DetectionLoss(nn.Module):
    """Classification and GIoU box loss over matched and sampled anchors.

    Args:
        num_classes: Foreground classes C (sigmoid outputs per anchor).
        matcher: Anchor matcher; ``AnchorMatcher()`` (ATSS, 4 candidates, 3 anchors per
            location) when None.
        sampler: Positive / hard-negative sampler; ``HardNegativeSampler()`` (256 per image,
            positive fraction 0.33, at least 16 negatives, pool 20) when None.
        coder: Delta coder; ``BoxCoder()`` (unit weights) when None.
        cls_loss: ``"bce"`` or ``"focal"``.
        focal_gamma: Focusing exponent of the focal loss.
        focal_alpha: Weight of positive targets in the focal loss (``1 - alpha`` for
            negatives), or None for no weighting.
        weights: Factor of each term, ``{"cls": float, "box": float}``; missing keys are 1.

    Example:
        >>> loss = DetectionLoss(num_classes=1, matcher=AnchorMatcher(3, 1))
        >>> anchors = torch.tensor([[0., 0., 4. * i, 4., 4., 4. * i + 4.] for i in range(6)])
        >>> logits, deltas = torch.zeros(1, 6, 1, requires_grad=True), torch.zeros(1, 6, 6, requires_grad=True)
        >>> terms = loss(logits, deltas, anchors, [6], [torch.tensor([[0., 0., 8., 4., 4., 12.]])],
        ...              [torch.tensor([0])])
        >>> sorted(terms), round(terms["box"].item(), 4)
        (['box', 'cls'], 0.0)
    """

    def __init__(self, num_classes: int, matcher: AnchorMatcher | None = None,
                 sampler: HardNegativeSampler | None = None, coder: BoxCoder | None = None, cls_loss: str = "bce",
                 focal_gamma: float = 2.0, focal_alpha: float | None = 0.25,
                 weights: Mapping[str, float] | None = None) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes: expected at least 1 foreground class, got {num_classes}")
        if cls_loss not in CLS_LOSSES:
            raise ValueError(f"cls_loss: expected one of {', '.join(CLS_LOSSES)}, got {cls_loss!r}")
        unknown = sorted(set(weights or {}) - set(DEFAULT_WEIGHTS))
        if unknown:
            raise ValueError(f"weights: unknown terms {unknown}; the terms are {sorted(DEFAULT_WEIGHTS)}")
        self.num_classes, self.cls_loss = int(num_classes), cls_loss
        self.focal_gamma, self.focal_alpha = float(focal_gamma), focal_alpha
        self.weights = {**DEFAULT_WEIGHTS, **{k: float(v) for k, v in (weights or {}).items()}}
        self.matcher = matcher or AnchorMatcher()
        self.sampler = sampler or HardNegativeSampler()
        self.coder = coder or BoxCoder()

    def forward(self, cls_logits: torch.Tensor, box_deltas: torch.Tensor, anchors: torch.Tensor,
                num_anchors_per_level: Sequence[int], boxes: Sequence[torch.Tensor], classes: Sequence[torch.Tensor],
                ignore_boxes: Sequence[torch.Tensor | None] | None = None) -> dict[str, torch.Tensor]:
        """The weighted loss terms of one batch.

        Args:
            cls_logits: (B, N, C) classification logits, anchors in ``anchors`` order.
            box_deltas: (B, N, 6) predicted deltas (dz, dy, dx, dd, dh, dw).
            anchors: (N, 6) anchors (z0, y0, x0, z1, y1, x1), voxels of the patch, shared by
                the batch, levels concatenated.
            num_anchors_per_level: Anchors per level, summing to N.
            boxes: B tensors (M_i, 6), ground-truth boxes of each image, same format (M_i may be 0).
            classes: B int64 tensors (M_i,), 0-based class of each box, < C.
            ignore_boxes: B tensors (K_i, 6) (or None) of ignore boxes, or None.

        Returns:
            ``{"cls": scalar, "box": scalar}``, each already multiplied by its weight; their
            sum is the loss to minimize.

        Raises:
            ValueError: Shapes disagree or a class index is outside ``[0, C)``.
        """
        self._check(cls_logits, box_deltas, anchors, boxes, classes, ignore_boxes)
        anchors = anchors.to(device=box_deltas.device, dtype=torch.float32)
        ignore = list(ignore_boxes) if ignore_boxes is not None else [None] * len(boxes)
        matches = [self.matcher(anchors, b, num_anchors_per_level, k) for b, k in zip(boxes, ignore)]
        labels = [anchor_labels(m, c) for m, c in zip(matches, classes)]
        with torch.no_grad():
            scores = torch.sigmoid(cls_logits.detach().float()).max(dim=2).values
        pos_masks, neg_masks = self.sampler.select_samples_img_list(labels, list(scores))
        pos = torch.stack(pos_masks).bool()
        sampled = pos | torch.stack(neg_masks).bool()
        num_pos = pos.sum().clamp(min=1)
        cls_sum = self._cls_sum(cls_logits, torch.stack(labels), sampled)
        box_sum = self._box_sum(box_deltas, anchors, boxes, matches, pos)
        return {"cls": self.weights["cls"] * cls_sum / num_pos, "box": self.weights["box"] * box_sum / num_pos}

    def _cls_sum(self, logits: torch.Tensor, labels: torch.Tensor, sampled: torch.Tensor) -> torch.Tensor:
        """Summed classification loss of the sampled anchors; labels (B, N) are class + 1 or 0."""
        from monai.losses.focal_loss import sigmoid_focal_loss

        total = logits[:, :0].float().sum()   # exact 0 that keeps the graph to every logit
        if not sampled.any():
            return total
        x = logits[sampled].float()                                           # (S, C)
        target = F.one_hot(labels[sampled], self.num_classes + 1)[:, 1:].to(x.dtype)
        if self.cls_loss == "focal":
            per = sigmoid_focal_loss(x, target, gamma=self.focal_gamma, alpha=self.focal_alpha)
        else:
            per = F.binary_cross_entropy_with_logits(x, target, reduction="none")
        return total + per.sum()

    def _box_sum(self, deltas: torch.Tensor, anchors: torch.Tensor, boxes: Sequence[torch.Tensor],
                 matches: Sequence[torch.Tensor], pos: torch.Tensor) -> torch.Tensor:
        """Summed ``1 - GIoU`` of the decoded sampled positives against their matched boxes."""
        from monai.data.box_utils import box_pair_giou

        total = deltas[:, :0].float().sum()   # exact 0 that keeps the graph to every delta
        for b in range(len(boxes)):
            idx = torch.nonzero(pos[b]).reshape(-1)
            if idx.numel() == 0:
                continue
            pred = self.coder.decode(deltas[b, idx].float(), anchors[idx])
            target = boxes[b].to(device=pred.device, dtype=pred.dtype)[matches[b][idx]]
            total = total + (1 - box_pair_giou(pred, target)).sum()
        return total

    def _check(self, cls_logits: torch.Tensor, box_deltas: torch.Tensor, anchors: torch.Tensor,
               boxes: Sequence[torch.Tensor], classes: Sequence[torch.Tensor],
               ignore_boxes: Sequence[torch.Tensor | None] | None) -> None:
        if cls_logits.ndim != 3 or cls_logits.shape[2] != self.num_classes:
            raise ValueError(f"cls_logits: expected (B, N, {self.num_classes}), got {tuple(cls_logits.shape)}")
        b, n = cls_logits.shape[:2]
        if box_deltas.shape != (b, n, 6) or anchors.shape != (n, 6):
            raise ValueError(f"box_deltas and anchors: expected ({b}, {n}, 6) and ({n}, 6) to match cls_logits "
                             f"{tuple(cls_logits.shape)}, got {tuple(box_deltas.shape)} and {tuple(anchors.shape)}")
        lengths = [len(boxes), len(classes)] + ([] if ignore_boxes is None else [len(ignore_boxes)])
        if any(k != b for k in lengths):
            raise ValueError(f"ground truth: expected one entry per image ({b}) in boxes, classes and ignore_boxes, "
                             f"got {lengths}")
        for i, (bx, c) in enumerate(zip(boxes, classes)):
            if bx.reshape(-1, 6).shape[0] != c.numel():
                raise ValueError(f"image {i}: {bx.reshape(-1, 6).shape[0]} boxes but {c.numel()} classes")
            if c.numel() and (int(c.min()) < 0 or int(c.max()) >= self.num_classes):
                raise ValueError(f"image {i}: class indices must lie in [0, {self.num_classes}), got "
                                 f"{sorted(set(c.tolist()))}")
