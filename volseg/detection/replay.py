"""The box aggregation replayed on recorded candidates, with other NMS and WBC thresholds.

:func:`replay_case` runs the three steps of
:class:`~volseg.detection.aggregation.BoxAggregator` (:func:`tile_detections`,
:func:`fuse_members`, :func:`fuse_tiles`) on a ``CASE_candidates.npz``
(:mod:`volseg.detection.candidates`), in the order the prediction ran them, so that at the
plan's thresholds it returns the prediction's boxes exactly. :func:`world_candidates` turns
the fused boxes into the LUNA16-style rows the FROC scores.

Example:
    >>> rec = load_candidates("fold_0/validation/lung_003_candidates.npz")  # doctest: +SKIP
    >>> steps = nms_tiles(rec, nms_iou=0.3)  # doctest: +SKIP
    >>> rows = world_candidates(rec, fuse_case(rec, steps, wbc_iou=0.2))  # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np

from volseg.detection.aggregation import fuse_members, fuse_tiles, tile_detections
from volseg.detection.clustering import Detections
from volseg.detection.export import boxes_to_input_grid
from volseg.io.world import box_to_world

__all__ = ["fuse_case", "nms_tiles", "replay_case", "world_candidates"]


def nms_tiles(record: dict, nms_iou: float) -> list[list[Detections]]:
    """Step ``add`` of every pass: per tile (in fused order), its passes' boxes after NMS at ``nms_iou``.

    Args:
        record: A loaded ``CASE_candidates.npz`` (:func:`~volseg.detection.candidates.load_candidates`).
        nms_iou: IoU above which NMS drops the lower-scoring box of a class, in (0, 1].
    """
    order = np.argsort(record["group"], kind="stable")
    bounds = np.searchsorted(record["group"][order], np.arange(len(record["offsets"]) + 1))
    tiles: list[list[Detections]] = [[] for _ in range(int(record["group_tile"].max()) + 1 if len(bounds) > 1 else 0)]
    shape = [int(v) for v in record["shape"]]
    for g, offset in enumerate(record["offsets"]):
        sel = order[bounds[g]:bounds[g + 1]]
        tiles[int(record["group_tile"][g])].append(tile_detections(
            record["boxes"][sel], record["scores"][sel], record["labels"][sel], record["weights"][sel],
            [int(v) for v in offset], record["pad_lo"], shape, nms_iou))
    return tiles


def fuse_case(record: dict, tiles: list[list[Detections]], wbc_iou: float) -> Detections:
    """Steps ``commit`` and ``finish``: WBC within each tile, then over the tiles, top ``max_detections``.

    Returns:
        The case's fused detections in voxels of the preprocessed image, highest score first.
    """
    fused = [f for f in (fuse_members(parts, wbc_iou, int(record["members"])) for parts in tiles) if f is not None]
    return fuse_tiles(fused, wbc_iou, int(record["max_detections"]))


def replay_case(record: dict, nms_iou: float, wbc_iou: float) -> Detections:
    """The case's fused boxes had it been predicted with these thresholds (preprocessed voxels)."""
    return fuse_case(record, nms_tiles(record, nms_iou), wbc_iou)


def world_candidates(record: dict, detections: Detections) -> np.ndarray:
    """float64 (N, 5) rows (x, y, z in mm, score, diameter in mm) of fused boxes, as ``CASE_boxes.json`` holds them.

    The boxes go to voxels of the input image (:func:`boxes_to_input_grid` with the record's
    ``props``), then to world centres and diameters on its ``geometry``.
    """
    if not len(detections):
        return np.zeros((0, 5))
    boxes = boxes_to_input_grid(detections.boxes.reshape(-1, 6), record["props"])
    centres, diameters = box_to_world(boxes, record["geometry"])
    return np.column_stack([centres, detections.scores, diameters])
