"""Anchor matching (ATSS), ignore regions and hard-negative sampling for detection training.

Boxes and anchors are (z0, y0, x0, z1, y1, x1) in voxels, half-open (see
:mod:`volseg.detection.boxes`). Anchors of one image are (N, 6), the levels concatenated
finest first, every level's anchors grouped by location (all anchors of a location
consecutive), as the detection heads flatten them.

Match values per anchor: ``k >= 0`` the index of the matched ground-truth box,
:data:`BACKGROUND` (-1) a negative, :data:`IGNORE` (-2) neither (it takes no part in the
classification loss).

MONAI's parts do the matching and the sampling. Both compare coordinate ``i`` with
coordinate ``i`` (and ``i + 3``) of the other box only: IoU, centre distances and
centre-in-box tests do not depend on the axis order, so z, y, x-ordered boxes go in
unchanged although MONAI names its 3D boxes (x1, y1, z1, x2, y2, z2).
"""

from __future__ import annotations

from typing import Sequence

import torch
from monai.apps.detection.utils.ATSS_matcher import ATSSMatcher
from monai.apps.detection.utils.hard_negative_sampler import HardNegativeSampler as MonaiHardNegativeSampler
from monai.data.box_utils import box_iou

BACKGROUND = -1
IGNORE = -2

# Sampler defaults (see HardNegativeSampler): at most 256 sampled anchors per image, a third
# of them positive; about two hard negatives per positive, at least 16 negatives per image
# (patches without objects still teach the background), drawn from the 20-times larger pool
# of the highest-scoring negatives.
BATCH_SIZE_PER_IMAGE = 256
POSITIVE_FRACTION = 0.33
MIN_NEGATIVES = 16
POOL_SIZE = 20.0
# ATSS candidates per box and level (nnDetection's 4). The planner writes these defaults into
# the plan's ``detection.matcher`` and ``detection.sampler``; training reads them from there.
NUM_CANDIDATES = 4


class AnchorMatcher:
    """ATSS matching of anchors to ground-truth boxes, with ignore boxes.

    ATSS (Zhang et al. 2020, as in nnDetection and MONAI): per box and level, the
    ``num_candidates * anchors_per_location`` anchors with the nearest centres are
    candidates; those whose IoU with the box reaches the mean + standard deviation of all
    its candidates' IoUs are positive (with ``center_in_gt``, their centres must also lie
    inside the box). An anchor positive for several boxes takes the one of highest IoU.

    Ignore boxes (excluded findings): an anchor that is not positive becomes :data:`IGNORE`
    when its IoU with an ignore box exceeds ``ignore_iou`` or, with ``ignore_center``, its
    centre lies inside one. Positives stay positive: a real object next to an excluded one
    keeps its anchors.

    Args:
        num_candidates: Nearest anchor locations per box and level (nnDetection: 4).
        anchors_per_location: Anchors (shapes) per location, the same on every level.
        center_in_gt: Require positive anchors' centres inside the box (MONAI's default;
            nnDetection's Retina U-Net leaves it off, which keeps small objects matched).
        ignore_iou: IoU with an ignore box above which a non-positive anchor is ignored
            (0.1: the IoU at which such a prediction would count as a hit in evaluation).
        ignore_center: Also ignore non-positive anchors centred inside an ignore box.

    Example:
        >>> anchors = torch.tensor([[0., 0., 4. * i, 4., 4., 4. * i + 4.] for i in range(6)])
        >>> boxes = torch.tensor([[0., 0., 8., 4., 4., 12.]])
        >>> AnchorMatcher(num_candidates=3, anchors_per_location=1)(anchors, boxes, [6]).tolist()
        [-1, -1, 0, -1, -1, -1]
    """

    def __init__(self, num_candidates: int = NUM_CANDIDATES, anchors_per_location: int = 3, center_in_gt: bool = False,
                 ignore_iou: float = 0.1, ignore_center: bool = True) -> None:
        if num_candidates < 1 or anchors_per_location < 1:
            raise ValueError(f"num_candidates and anchors_per_location: expected >= 1, got {num_candidates} "
                             f"and {anchors_per_location}")
        if not 0 <= ignore_iou < 1:
            raise ValueError(f"ignore_iou: expected a value in [0, 1), got {ignore_iou}")
        self.num_candidates, self.anchors_per_location = int(num_candidates), int(anchors_per_location)
        self.center_in_gt, self.ignore_iou, self.ignore_center = bool(center_in_gt), float(ignore_iou), ignore_center
        # MONAI caps the candidates of a level at its number of *locations* although the level
        # holds locations x anchors_per_location anchors; counting anchors instead (one anchor
        # per "location", num_candidates x anchors_per_location candidates) selects the same
        # nearest anchors without that cap.
        self._atss = ATSSMatcher(num_candidates=self.num_candidates * self.anchors_per_location,
                                 similarity_fn=box_iou, center_in_gt=self.center_in_gt)

    def __call__(self, anchors: torch.Tensor, boxes: torch.Tensor, num_anchors_per_level: Sequence[int],
                 ignore_boxes: torch.Tensor | None = None) -> torch.Tensor:
        """Match one image's anchors.

        Args:
            anchors: (N, 6) anchors (z0, y0, x0, z1, y1, x1), voxels, levels concatenated.
            boxes: (M, 6) ground-truth boxes, same format; M may be 0.
            num_anchors_per_level: Anchors of each level (summing to N), in ``anchors`` order.
            ignore_boxes: (K, 6) ignore boxes, same format, or None.

        Returns:
            int64 (N,) on ``anchors.device``: matched box index, :data:`BACKGROUND` or :data:`IGNORE`.

        Raises:
            ValueError: Shapes are not (., 6) or the level sizes do not add up to N.
        """
        anchors = _as_boxes(anchors, "anchors", anchors)
        boxes = _as_boxes(boxes, "boxes", anchors)
        counts = [int(n) for n in num_anchors_per_level]
        if sum(counts) != len(anchors) or min(counts, default=0) < 1:
            raise ValueError(f"num_anchors_per_level: expected positive counts summing to the {len(anchors)} "
                             f"anchors, got {counts}")
        if len(boxes) == 0:   # MONAI's matcher returns these on the CPU; keep the anchors' device
            matches = torch.full((len(anchors),), BACKGROUND, dtype=torch.int64, device=anchors.device)
        else:
            _, matches = self._atss(boxes, anchors, counts, 1)
            matches = matches.to(device=anchors.device, dtype=torch.int64)
        if ignore_boxes is not None and len(ignore_boxes):
            ignored = ignored_anchors(anchors, _as_boxes(ignore_boxes, "ignore_boxes", anchors), self.ignore_iou,
                                      self.ignore_center)
            matches = torch.where(ignored & (matches < 0), torch.full_like(matches, IGNORE), matches)
        return matches


def ignored_anchors(anchors: torch.Tensor, ignore_boxes: torch.Tensor, iou_threshold: float,
                    center_inside: bool = True) -> torch.Tensor:
    """Anchors overlapping an ignore box: IoU above ``iou_threshold`` or (optionally) centre inside.

    Written here because MONAI's ``centers_in_boxes`` tests pairs, not all anchors against
    all boxes. A centre ``c`` is inside ``[lo, hi)`` when ``lo <= c < hi`` on every axis.

    Args:
        anchors: (N, 6) anchors (z0, y0, x0, z1, y1, x1), voxels.
        ignore_boxes: (K, 6) boxes, same format.
        iou_threshold: IoU strictly above which an anchor is flagged.
        center_inside: Also flag anchors whose centre lies inside an ignore box.

    Returns:
        bool (N,).
    """
    if len(ignore_boxes) == 0:
        return torch.zeros(len(anchors), dtype=torch.bool, device=anchors.device)
    flagged = (box_iou(anchors, ignore_boxes) > iou_threshold).any(dim=1)
    if center_inside:
        centre = (anchors[:, None, :3] + anchors[:, None, 3:]) / 2                  # (N, 1, 3)
        inside = (centre >= ignore_boxes[None, :, :3]) & (centre < ignore_boxes[None, :, 3:])
        flagged = flagged | inside.all(dim=2).any(dim=1)
    return flagged


def anchor_labels(matches: torch.Tensor, box_classes: torch.Tensor) -> torch.Tensor:
    """Sampler labels from matches: class index + 1 for positives, 0 background, -1 ignored.

    Args:
        matches: int64 (N,) as :class:`AnchorMatcher` returns them.
        box_classes: int64 (M,) 0-based class of every ground-truth box.

    Returns:
        int64 (N,) labels on ``matches.device``.
    """
    labels = torch.zeros_like(matches)
    positive = matches >= 0
    if positive.any():
        labels[positive] = box_classes.to(matches.device, torch.int64)[matches[positive]] + 1
    labels[matches == IGNORE] = -1
    return labels


class HardNegativeSampler(MonaiHardNegativeSampler):
    """MONAI's hard-negative sampler (nnDetection's), with a seedable random source.

    Per image: ``num_pos = min(#positives, int(batch_size_per_image * positive_fraction))``
    positives at random; ``num_neg = min(#negatives, max(min_neg, int(max(1, num_pos) *
    (1 / positive_fraction - 1))))`` negatives at random from the ``num_neg * pool_size``
    negatives of highest foreground score. ``batch_size_per_image`` is therefore an upper
    bound; an image without positives still gets ``min_neg`` negatives. MONAI draws with
    the global torch generator; this subclass draws with ``generator`` when given.

    Args:
        batch_size_per_image: Sampled anchors per image at most (positives capped at the fraction).
        positive_fraction: Share of positives, in (0, 1).
        min_neg: Negatives per image at least, when that many exist.
        pool_size: Pool of hardest negatives, in multiples of ``num_neg``.
        generator: Random source; the global torch generator when None.

    Example:
        >>> sampler = HardNegativeSampler(generator=torch.Generator().manual_seed(0))
        >>> pos, neg = sampler.select_samples_img_list([torch.tensor([0, 1, 0, -1])], [torch.rand(4)])
        >>> pos[0].tolist(), int(neg[0].sum())
        ([0, 1, 0, 0], 2)
    """

    def __init__(self, batch_size_per_image: int = BATCH_SIZE_PER_IMAGE, positive_fraction: float = POSITIVE_FRACTION,
                 min_neg: int = MIN_NEGATIVES, pool_size: float = POOL_SIZE,
                 generator: torch.Generator | None = None) -> None:
        if batch_size_per_image < 1 or not 0 < positive_fraction < 1 or min_neg < 0 or pool_size < 1:
            raise ValueError(f"sampler: expected batch_size_per_image >= 1, 0 < positive_fraction < 1, min_neg >= 0, "
                             f"pool_size >= 1; got {batch_size_per_image}, {positive_fraction}, {min_neg}, {pool_size}")
        super().__init__(batch_size_per_image, positive_fraction, min_neg=min_neg, pool_size=pool_size)
        self.generator = generator

    def _randperm(self, n: int, device: torch.device) -> torch.Tensor:
        where = self.generator.device if self.generator is not None else device
        return torch.randperm(n, generator=self.generator, device=where).to(device)

    def select_positives(self, positive: torch.Tensor, num_pos: int, labels: torch.Tensor) -> torch.Tensor:
        """uint8 (A,) mask of ``num_pos`` positives drawn from the indices ``positive``."""
        mask = torch.zeros_like(labels, dtype=torch.uint8)
        mask[positive[self._randperm(positive.numel(), positive.device)[:num_pos]]] = 1
        return mask

    def select_negatives(self, negative: torch.Tensor, num_neg: int, fg_probs: torch.Tensor) -> torch.Tensor:
        """uint8 (A,) mask of ``num_neg`` negatives drawn from the hardest of the indices ``negative``."""
        pool = min(negative.numel(), int(num_neg * self.pool_size))
        _, order = fg_probs[negative].to(torch.float32).topk(pool, dim=0, sorted=True)
        hard = negative[order]
        mask = torch.zeros_like(fg_probs, dtype=torch.uint8)
        mask[hard[self._randperm(hard.numel(), hard.device)[:num_neg]]] = 1
        return mask


def _as_boxes(boxes: torch.Tensor, name: str, like: torch.Tensor) -> torch.Tensor:
    """``boxes`` as a float (N, 6) tensor on the device (and float dtype) of ``like``."""
    boxes = torch.as_tensor(boxes)
    if boxes.numel() == 0:
        boxes = boxes.reshape(0, 6)
    if boxes.ndim != 2 or boxes.shape[1] != 6:
        raise ValueError(f"{name}: expected (N, 6) boxes (z0, y0, x0, z1, y1, x1), got shape {tuple(boxes.shape)}")
    dtype = like.dtype if like.is_floating_point() else torch.float32
    return boxes.to(device=like.device, dtype=dtype)
