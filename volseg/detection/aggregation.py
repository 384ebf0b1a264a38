"""Box aggregation over the sliding window: Retina U-Net tiles → one set of fused boxes per case.

:class:`BoxAggregator` is the :class:`~volseg.tasks.base.TileAggregator` of detection. It
turns the head outputs of every tile and ensemble member (network × mirroring) into boxes on
the CPU and fuses them with weighted box clustering (WBC,
:func:`~volseg.detection.clustering.weighted_box_clustering`) in two steps::

    add     per tile and member  sigmoid scores (B, N, K) → the anchors of peak cells (peak_window) →
                                 top-k ≥ score_floor → decode (anchors of the patch) → un-mirror
                                 within the patch → tile weight at the box centre → NMS per class
                                 (tile_nms) → tile offset − padding → clip to the image
    commit  per tile             WBC over its members, expected = grid.members
    finish  per case             WBC over the tiles, expected = 1 → the max_detections highest scores

Boxes are (z0, y0, x0, z1, y1, x1) in voxels, half-open (:mod:`volseg.detection.boxes`);
scores are per foreground class (sigmoid, no background), classes 0-based.

Tile weight: a box predicted near a tile's border saw less context than one predicted near
its centre. Each box gets the weight of the dense stitching at its centre: the product of
the three 1D Gaussians of :func:`~volseg.kernels.gaussian.gaussian_1d` (σ = ``sigma_scale``
× patch, 1 at the tile centre), evaluated at the continuous centre index
``(z0 + z1) / 2 - 0.5`` (linear between voxel centres, clamped to the patch). WBC weighs the
fused coordinates by ``score × weight`` and the fused score by ``weight``.

Expected count: WBC scores a cluster of ``n`` boxes ``sum(w s) / (sum(w) + max(0, E - n) *
mean(w))``: each of the ``E`` expected predictions that is missing counts as one of score 0.
Within one tile every member sees the same voxels, so ``E = grid.members`` there: a box found
by one of eight mirrorings of a tile scores an eighth of one found by all. Across tiles
``E = 1``: a tile that cuts an object off is not expected to find it, and the fused score is
the mean of the tiles' scores weighted by their summed weights (so the tile whose centre is
nearest the object dominates). Counting ``grid.members`` once over all tiles instead would
let the boxes of the overlapping tiles fill in for missing members (an object inside eight
tiles would reach the count with a single member). nnDetection divides by a per-box count,
the mean number of tile × model predictions covering the box's voxels. When every member
finds the object in every tile that holds it, the two steps give the box and score of one
WBC over all boxes.

Example:
    >>> agg = BoxAggregator(config["detection"]["anchors"], (64, 128, 128), num_classes=1,
    ...                     num_anchors=3)  # doctest: +SKIP
    >>> result, _ = run_sliding_window(net, image, (64, 128, 128), agg, mirror_axes=(0, 1, 2))  # doctest: +SKIP
    >>> result.boxes.shape, result.scores[:3]  # doctest: +SKIP
    ((100, 6), array([0.97, 0.91, 0.40]))
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from volseg.detection.boxes import clip_boxes, flip_boxes
from volseg.detection.candidates import CandidateRecorder
from volseg.detection.clustering import Detections, concat_detections, select_detections, weighted_box_clustering
from volseg.detection.coder import BoxCoder
from volseg.detection.greedy import greedy_nms
from volseg.inference.dense import DenseAggregator, SlidingWindowResult
from volseg.kernels.gaussian import gaussian_1d
from volseg.networks.retina_unet import anchor_boxes, flatten_level_outputs, head_rows
from volseg.tasks.base import TileGrid

__all__ = ["BoxAggregator", "BoxResult", "centre_weight", "peak_mask", "fuse_members", "fuse_tiles", "tile_detections",
           "tile_nms"]


@dataclass
class BoxResult:
    """Fused detections of one case, on the CPU.

    Attributes:
        boxes: float64 (N, 6) boxes (z0, y0, x0, z1, y1, x1), half-open, in voxels of the
            (unpadded) image given to the sliding window, highest score first.
        scores: float64 (N,) fused scores in [0, 1].
        classes: int64 (N,) 0-based foreground class indices.
        dense: The dense aggregator's result (segmentation head), or ``None``.
        num_candidates: Boxes kept from all tiles and members after NMS, before clustering.
        timings: Seconds: ``boxes`` (scoring, decoding, NMS and the per-tile WBC) and
            ``clustering`` (the WBC over tiles and the selection).
        candidates: With ``record=True``, every tile's boxes before NMS
            (:class:`~volseg.detection.candidates.CandidateRecorder`), else ``None``.
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    dense: SlidingWindowResult | None = None
    num_candidates: int = 0
    timings: dict = field(default_factory=dict)
    candidates: dict | None = None


def centre_weight(boxes: torch.Tensor, weights_1d: Sequence[torch.Tensor]) -> torch.Tensor:
    """Tile weight of each box: the separable Gaussian of the dense stitching at the box centre.

    Args:
        boxes: (N, 6) boxes (z0, y0, x0, z1, y1, x1) in voxels of the tile, half-open.
        weights_1d: Per axis (z, y, x) the (p_a,) weights of the tile's voxels, e.g.
            :func:`~volseg.kernels.gaussian.gaussian_1d`; on the device of ``boxes``.

    Returns:
        float32 (N,) weights: the product over axes of ``weights_1d[a]`` linearly interpolated
        at the centre index ``(lo + hi) / 2 - 0.5``, clamped to ``[0, p_a - 1]`` (a centre
        outside the tile gets the border weight).
    """
    out = torch.ones(len(boxes), dtype=torch.float32, device=boxes.device)
    for a, w in enumerate(weights_1d):
        w = w.to(device=boxes.device, dtype=torch.float32)
        n = w.numel()
        t = ((boxes[:, a] + boxes[:, a + 3]) / 2.0 - 0.5).float().clamp(0.0, n - 1.0)
        i0 = t.floor().long().clamp(max=max(n - 2, 0))
        i1 = (i0 + 1).clamp(max=n - 1)
        frac = t - i0.float()
        out = out * (w[i0] * (1.0 - frac) + w[i1] * frac)
    return out


def peak_mask(cls_map: torch.Tensor, num_anchors: int, window: int) -> torch.Tensor:
    """Anchors at the cells that hold their neighbourhood's highest score, per class.

    A nodule lights up a blob of neighbouring cells, each with boxes that NMS and WBC then
    fuse again; keeping only the blob's peak cell hands them one cell's anchors instead, so
    that the top-k per tile holds distinct objects rather than one object's neighbours, and
    the fusions' pairwise IoUs shrink with it. A cell is a peak of class k when the highest
    logit of k over its anchors is the maximum over the ``window``³ cells around it (ties:
    every tied cell stays; logits rank as the sigmoid scores do).

    Args:
        cls_map: One level's classification logits (B, A * K, z, y, x), channel ``a * K + k``.
        num_anchors: A, anchors per cell.
        window: Odd neighbourhood edge in cells (≥ 3 to have an effect).

    Returns:
        bool (B, A * K, z, y, x): True for every anchor of class k at a peak cell of k.
    """
    b, c, z, y, x = cls_map.shape
    best = cls_map.float().view(b, num_anchors, c // num_anchors, z, y, x).amax(1)        # (B, K, z, y, x)
    peak = best >= torch.nn.functional.max_pool3d(best, window, stride=1, padding=window // 2)
    return peak.unsqueeze(1).expand(b, num_anchors, *peak.shape[1:]).reshape(b, c, z, y, x)


def tile_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression within each class, for the few thousand boxes of one tile.

    Same rule as :func:`~volseg.detection.clustering.nms`: a box is dropped when its IoU with
    a higher-scoring kept box of its class is greater than ``iou_threshold``; equal scores
    keep the earlier box. The IoUs of the tile's boxes are computed at once
    (:func:`~volseg.detection.greedy.greedy_nms`), much faster than MONAI's per-box loop at
    these sizes.

    Args:
        boxes: float (N, 6) boxes (z0, y0, x0, z1, y1, x1) in voxels, half-open.
        scores: (N,) scores.
        labels: (N,) class indices.
        iou_threshold: IoU above which the lower-scoring box is dropped.

    Returns:
        int64 (M,) indices of the kept boxes, highest score first.
    """
    order = np.argsort(-np.asarray(scores), kind="stable")
    b = np.asarray(boxes, dtype=np.float64)[order]
    keep = greedy_nms(b, np.asarray(labels)[order], iou_threshold)
    return order[keep].astype(np.int64)


def tile_detections(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, weights: np.ndarray,
                    offset: Sequence[int], pad_lo: np.ndarray, shape: Sequence[int], nms_iou: float) -> Detections:
    """Step ``add`` for one tile and member: NMS, then the boxes moved into the image and clipped.

    Args:
        boxes: float32 (N, 6) decoded, un-mirrored boxes (z0, y0, x0, z1, y1, x1) in voxels of the tile.
        scores: float32 (N,) sigmoid scores; labels: int64 (N,) classes; weights: float32 (N,) tile weights.
        offset: The tile's lower corner (z, y, x), voxels of the padded image.
        pad_lo: float64 (6,) the padding before the image, twice (z, y, x, z, y, x).
        shape: Spatial shape (z, y, x) of the unpadded image.
        nms_iou: IoU above which NMS drops the lower-scoring box of a class.

    Returns:
        The kept boxes in voxels of the unpadded image; boxes clipped to nothing are dropped.
    """
    sel = tile_nms(boxes, scores, labels, nms_iou)
    moved = boxes[sel].astype(np.float64) + np.asarray(list(offset) * 2, dtype=np.float64) - pad_lo
    moved = clip_boxes(moved, shape)
    det = Detections(moved, scores[sel].astype(np.float64), labels[sel].astype(np.int64),
                     weights[sel].astype(np.float64))
    return det.take(np.all(moved[:, 3:] > moved[:, :3], axis=1))


def fuse_members(parts: Sequence[Detections], wbc_iou: float, members: int) -> Detections | None:
    """Step ``commit`` for one tile: WBC over its members' boxes (``expected = members``); None when empty."""
    det = concat_detections(parts)
    return weighted_box_clustering(det, wbc_iou, expected=members) if len(det) else None


def fuse_tiles(tiles: Sequence[Detections], wbc_iou: float, max_detections: int) -> Detections:
    """Step ``finish``: WBC over the tiles (``expected = 1``), the ``max_detections`` highest scores."""
    fused = weighted_box_clustering(concat_detections(tiles), wbc_iou, expected=1, top=max_detections)
    return select_detections(fused, 0.0, max_detections)


def _check_fraction(name: str, value: float, low_open: bool = True) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not ((0.0 < value) if low_open else (0.0 <= value)) or value > 1.0:
        interval = "(0, 1]" if low_open else "[0, 1]"
        raise ValueError(f"{name}: expected a number in {interval}, found {value!r}")
    return float(value)


def _check_count(name: str, value: int, allow_all: bool = False) -> int:
    ok = isinstance(value, int) and not isinstance(value, bool) and (value >= 1 or (allow_all and value == -1))
    if not ok:
        raise ValueError(f"{name}: expected an integer >= 1{' or -1 (all)' if allow_all else ''}, found {value!r}")
    return int(value)


class BoxAggregator:
    """Boxes of every tile and member, fused per case by weighted box clustering.

    Args:
        anchors_plan: Anchor plan ``{"levels": [{"stride": [z, y, x], "shapes": [[z, y, x], ...]}]}``,
            levels in the network's ``detection_levels`` order (see
            :func:`~volseg.networks.retina_unet.anchor_boxes`).
        patch_size: Tile size (z, y, x) in voxels; the grid's patch must match it.
        num_classes: K, foreground classes of the classification head.
        num_anchors: A, anchors per feature cell (every level of the plan has A shapes).
        coder: Decodes the box deltas; ``BoxCoder()`` (unit weights) when ``None``.
        score_floor: Boxes with a lower sigmoid score are dropped in every tile.
        top_k_per_tile: Highest (anchor, class) scores kept per tile and member before NMS;
            -1 keeps all.
        peak_window: Odd edge, in feature cells, of the neighbourhood in which a cell must hold
            the highest score of its class (over its anchors) for its anchors to be kept, per
            level, tile and member, before the top-k (:func:`peak_mask`); 1 keeps every cell.
        nms_iou: IoU above which NMS drops the lower-scoring box of a class, per tile and member.
        wbc_iou: IoU with a cluster's top box needed to join it, in (0, 1], in both WBC steps.
        max_detections: Fused boxes kept per case (highest scores); -1 keeps all.
        sigma_scale: σ of the tile weight as a fraction of the patch (as the dense stitching).
        gaussian_center: Where the tile weight peaks (:data:`volseg.kernels.gaussian.GAUSSIAN_CENTERS`).
        dense: When given, receives ``output["seg"]`` of every ``add`` and every other call,
            so the segmentation head is stitched as by a segmentation model; its result is
            :attr:`BoxResult.dense`.
        record: Also keep every tile's boxes before NMS (:attr:`BoxResult.candidates`), so that
            the aggregation can be replayed with other IoU thresholds
            (:func:`~volseg.detection.replay.replay_case`).

    Attributes:
        row_wise: False (boxes do not depend on the row order), unless ``dense`` works in
            slab mode, whose row-by-row order (along ``row_axis``) the engine then follows.

    Raises:
        ValueError: A malformed anchor plan or patch, another number of shapes than
            ``num_anchors`` in a level, or a parameter out of range.
    """

    def __init__(self, anchors_plan: dict, patch_size: Sequence[int], num_classes: int, num_anchors: int,
                 coder: BoxCoder | None = None, score_floor: float = 0.01, top_k_per_tile: int = 1000,
                 peak_window: int = 1, nms_iou: float = 0.5, wbc_iou: float = 0.2, max_detections: int = 100,
                 sigma_scale: float = 0.125, dense: DenseAggregator | None = None,
                 gaussian_center: str = "middle", record: bool = False) -> None:
        self.patch = tuple(int(p) for p in patch_size)
        self.anchors_cpu = anchor_boxes(self.patch, anchors_plan)   # validates the plan and the patch
        self.k = _check_count("num_classes", num_classes)
        self.a = _check_count("num_anchors", num_anchors)
        for i, level in enumerate(anchors_plan["levels"]):
            if len(level["shapes"]) != self.a:
                raise ValueError(f"anchors.levels[{i}].shapes: expected {self.a} shapes (num_anchors), "
                                 f"found {len(level['shapes'])}")
        self.coder = BoxCoder() if coder is None else coder
        self.score_floor = _check_fraction("score_floor", score_floor, low_open=False)
        self.top_k = _check_count("top_k_per_tile", top_k_per_tile, allow_all=True)
        self.peak_window = _check_count("peak_window", peak_window)
        if self.peak_window % 2 == 0:
            raise ValueError(f"peak_window: expected an odd number of cells, found {peak_window}")
        self.nms_iou = _check_fraction("nms_iou", nms_iou)
        self.wbc_iou = _check_fraction("wbc_iou", wbc_iou)
        self.max_detections = _check_count("max_detections", max_detections, allow_all=True)
        if not (isinstance(sigma_scale, (int, float)) and math.isfinite(sigma_scale) and sigma_scale > 0):
            raise ValueError(f"sigma_scale: expected a positive fraction of the patch, found {sigma_scale!r}")
        self.sigma_scale = float(sigma_scale)
        self.gaussian_center = gaussian_center
        self.dense = dense
        self.row_wise = bool(dense.row_wise) if dense is not None else False
        self.row_axis = int(dense.row_axis) if dense is not None else 0
        self.record = bool(record)
        self.recorder: CandidateRecorder | None = None
        self._batch: dict[int, list[Detections]] = {}   # tile of the batch → its members' boxes
        self._raw: dict[int, list[tuple]] = {}           # the same before NMS, when recording
        self._tiles: list[Detections] = []               # members fused, one entry per tile
        self._seconds, self.num_candidates = 0.0, 0

    def setup(self, grid: TileGrid) -> None:
        """Anchors and tile weights on ``grid.device``; forgets boxes of an earlier case.

        Raises:
            ValueError: The grid's patch differs from ``patch_size``.
        """
        if tuple(grid.patch) != self.patch:
            raise ValueError(f"grid.patch: expected the aggregator's patch_size {self.patch}, found {tuple(grid.patch)}")
        self.grid = grid
        self.anchors = self.anchors_cpu.to(grid.device)
        self.w = [gaussian_1d(p, self.sigma_scale, grid.device, self.gaussian_center) for p in self.patch]
        self._pad_lo = np.asarray([a for a, _ in grid.pads] * 2, dtype=np.float64)
        self._shape = [s - a - b for s, (a, b) in zip(grid.shape, grid.pads)]
        self._members = max(1, int(grid.members))
        self._batch, self._raw, self._tiles, self._seconds, self.num_candidates = {}, {}, [], 0.0, 0
        self.recorder = CandidateRecorder(self._pad_lo, self._shape, self._members, self.max_detections,
                                          self.nms_iou, self.wbc_iou) if self.record else None
        if self.dense is not None:
            self.dense.setup(grid)

    def start_row(self, start: int) -> None:
        if self.dense is not None:
            self.dense.start_row(start)

    def add(self, output: Any, offsets: Sequence[tuple[int, int, int]], flip_dims: Sequence[int]) -> None:
        """Keep the boxes of one member's output for a batch of B tiles.

        Args:
            output: The network's dict: ``"cls"`` and ``"box"`` lists of per-level maps
                (B, A * K, z_l, y_l, x_l) and (B, A * 6, z_l, y_l, x_l); ``"seg"`` too when a
                dense aggregator is attached.
            offsets: B tile lower corners (z, y, x), voxels of the padded image.
            flip_dims: Tensor dims (2 = z, 3 = y, 4 = x) the input tiles were mirrored along.

        Raises:
            ValueError: ``output`` lacks a key, or its maps do not match the anchors or classes.
        """
        t0 = time.perf_counter()
        cls, deltas = self._flatten(output, len(offsets))
        axes = [int(d) - 2 for d in flip_dims]
        peaks = None if self.peak_window == 1 else torch.cat(
            [head_rows(peak_mask(c, self.a, self.peak_window), self.a) for c in output["cls"]], dim=1)
        scores, tile, anchor, label = self._candidates(cls, peaks)
        boxes = self.coder.decode(deltas[tile, anchor].float(), self.anchors[anchor])
        if axes:
            boxes = flip_boxes(boxes, axes, self.patch)
        weights = centre_weight(boxes, self.w)
        boxes, scores, tile, label, weights = (v.cpu().numpy() for v in (boxes, scores, tile, label, weights))
        for b, offset in enumerate(offsets):
            sel = np.flatnonzero(tile == b)
            if len(sel) == 0:
                continue
            raw = (boxes[sel], scores[sel], label[sel], weights[sel])
            self._batch.setdefault(b, []).append(
                tile_detections(*raw, offset, self._pad_lo, self._shape, self.nms_iou))
            if self.recorder is not None:
                self._raw.setdefault(b, []).append((*raw, offset))
        self._seconds += time.perf_counter() - t0
        if self.dense is not None:
            self.dense.add(output["seg"], offsets, flip_dims)

    def commit(self, offsets: Sequence[tuple[int, int, int]]) -> None:
        """Fuse the members of every tile of the batch (WBC, ``expected = grid.members``)."""
        t0 = time.perf_counter()
        for b, parts in self._batch.items():
            self.num_candidates += sum(len(p) for p in parts)
            fused = fuse_members(parts, self.wbc_iou, self._members)
            if fused is not None:
                self._tiles.append(fused)
            if self.recorder is not None:
                self.recorder.add_tile(self._raw[b])
        self._batch, self._raw = {}, {}
        self._seconds += time.perf_counter() - t0
        if self.dense is not None:
            self.dense.commit(offsets)

    def finish(self) -> BoxResult:
        """Fuse the tiles' boxes (WBC, ``expected = 1``) and keep the ``max_detections`` highest scores.

        Returns:
            A :class:`BoxResult` in voxels of the unpadded image.
        """
        t0 = time.perf_counter()
        final, self._tiles = fuse_tiles(self._tiles, self.wbc_iou, self.max_detections), []
        dense = self.dense.finish() if self.dense is not None else None
        timings = {"boxes": self._seconds, "clustering": time.perf_counter() - t0}
        candidates = self.recorder.finish() if self.recorder is not None else None
        return BoxResult(final.boxes.reshape(-1, 6), final.scores, final.labels, dense, self.num_candidates, timings,
                         candidates)

    def _flatten(self, output: Any, n_tiles: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, K) logits and (B, N, 6) deltas of ``output``, checked against the anchors."""
        keys = ("cls", "box", "seg") if self.dense is not None else ("cls", "box")
        if not isinstance(output, dict) or any(k not in output for k in keys):
            found = sorted(output) if isinstance(output, dict) else type(output).__name__
            raise ValueError(f"output: expected the network's dict with keys {list(keys)}, found {found}")
        cls, deltas = flatten_level_outputs(output["cls"], output["box"], self.a)
        n = len(self.anchors)
        if cls.shape[0] != n_tiles or cls.shape[1] != n or cls.shape[2] != self.k:
            raise ValueError(f"output: expected {n_tiles} tiles × {n} anchors × {self.k} classes for patch "
                             f"{self.patch}, found {tuple(cls.shape)}")
        return cls, deltas

    def _candidates(self, cls: torch.Tensor, keep: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """Per tile the top-k (anchor, class) sigmoid scores >= ``score_floor``, among ``keep`` (B, N, K) when given.

        Returns:
            ``(scores, tile, anchor, label)``: (M,) float32 scores and int64 indices.
        """
        b = cls.shape[0]
        probs = torch.sigmoid(cls.float())
        if keep is not None:
            probs = probs.masked_fill(~keep, -1.0)                      # below any floor
        probs = probs.reshape(b, -1)                                     # index = anchor * K + class
        k = probs.shape[1] if self.top_k < 0 else min(self.top_k, probs.shape[1])
        vals, idx = probs.topk(k, dim=1)
        tile, col = torch.nonzero(vals >= self.score_floor, as_tuple=True)   # NaN scores fail the test
        flat = idx[tile, col]
        return vals[tile, col], tile, flat // self.k, flat % self.k
