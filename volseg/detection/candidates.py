"""Every tile's boxes before NMS, kept for a case, and their file ``CASE_candidates.npz``.

The held-out fold is predicted once, with the plan's NMS and WBC thresholds. To choose those
thresholds on it (:mod:`volseg.detection.sweep`) without running the network again, the box
aggregator can record what enters its NMS: per tile and ensemble member (network ×
mirroring), the decoded, un-mirrored boxes with their scores, classes and tile weights, plus
the tile's position. :func:`volseg.detection.replay.replay_case` runs the aggregator's own
steps on them with other thresholds; with the plan's, it gives the prediction's boxes bit for
bit.

``CASE_candidates.npz`` (``np.savez_compressed``, read with ``allow_pickle=False``):

=================  ===============  ==========================================================
key                dtype, shape     meaning
=================  ===============  ==========================================================
boxes              float32 (M, 6)   (z0, y0, x0, z1, y1, x1), half-open voxels of the tile
scores             float32 (M,)     sigmoid score of the box's class
labels             int64 (M,)       0-based foreground class
weights            float32 (M,)     tile weight at the box centre
group              int32 (M,)       the (tile, member) pass the box comes from, 0 … G - 1
group_tile         int32 (G,)       the tile of each pass, 0 … T - 1, in the order fused
offsets            int64 (G, 3)     the tile's lower corner (z, y, x), voxels of the padded image
pad_lo             float64 (6,)     padding before the image (z, y, x), twice
shape              int64 (3,)       the unpadded (preprocessed) image, (z, y, x)
members            int64 ()         forward passes per tile (the per-tile WBC's expected count)
max_detections     int64 ()         fused boxes kept per case
nms_iou, wbc_iou   float64 ()       the thresholds the prediction fused these boxes with
props              str ()           JSON: crop_bbox, shape_after_crop, shape_after_resampling
geometry           str ()           JSON: the input image's grid (:meth:`Geometry.to_dict`)
=================  ===============  ==========================================================
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np

from volseg.io.atomic import write_atomic
from volseg.io.nifti import Geometry

__all__ = ["CANDIDATES_SUFFIX", "CandidateRecorder", "fused_with", "load_candidates", "save_candidates"]

CANDIDATES_SUFFIX = "_candidates.npz"
ARRAY_KEYS = ("boxes", "scores", "labels", "weights", "group", "group_tile", "offsets", "pad_lo", "shape",
              "members", "max_detections", "nms_iou", "wbc_iou")
PROPS_KEYS = ("crop_bbox", "shape_after_crop", "shape_after_resampling")


class CandidateRecorder:
    """Collects the boxes that enter the aggregator's NMS, tile by tile, in the order they are fused.

    Args:
        pad_lo: float64 (6,) padding before the image (z, y, x), twice.
        shape: The unpadded image (z, y, x), voxels.
        members: Forward passes per tile.
        max_detections: Fused boxes kept per case.
        nms_iou, wbc_iou: The thresholds the aggregator fuses them with.
    """

    def __init__(self, pad_lo: np.ndarray, shape: Sequence[int], members: int, max_detections: int,
                 nms_iou: float, wbc_iou: float) -> None:
        self.meta = {"pad_lo": np.asarray(pad_lo, dtype=np.float64).reshape(6),
                     "shape": np.asarray(shape, dtype=np.int64).reshape(3),
                     "members": np.asarray(members, dtype=np.int64),
                     "max_detections": np.asarray(max_detections, dtype=np.int64),
                     "nms_iou": np.asarray(nms_iou, dtype=np.float64), "wbc_iou": np.asarray(wbc_iou, dtype=np.float64)}
        self._groups: list[tuple] = []
        self._tile_of: list[int] = []
        self._tiles = 0

    def add_tile(self, groups: Sequence[tuple]) -> None:
        """One tile's passes, each ``(boxes, scores, labels, weights, offset)`` as the aggregator's ``add`` saw them."""
        for g in groups:
            self._groups.append(g)
            self._tile_of.append(self._tiles)
        self._tiles += 1

    def finish(self) -> dict:
        """The arrays of ``CASE_candidates.npz`` (all keys but ``props`` and ``geometry``)."""
        g = self._groups
        out = {"boxes": np.concatenate([x[0] for x in g]).reshape(-1, 6) if g else np.zeros((0, 6), np.float32),
               "scores": np.concatenate([x[1] for x in g]) if g else np.zeros(0, np.float32),
               "labels": np.concatenate([x[2] for x in g]) if g else np.zeros(0, np.int64),
               "weights": np.concatenate([x[3] for x in g]) if g else np.zeros(0, np.float32),
               "group": np.repeat(np.arange(len(g), dtype=np.int32), [len(x[1]) for x in g]),
               "group_tile": np.asarray(self._tile_of, dtype=np.int32),
               "offsets": np.asarray([list(x[4]) for x in g], dtype=np.int64).reshape(-1, 3), **self.meta}
        self._groups, self._tile_of, self._tiles = [], [], 0
        return out


def save_candidates(out_dir: str | os.PathLike, case_id: str, record: dict, props: dict,
                    geometry: Geometry) -> Path:
    """Write ``OUT/CASE_candidates.npz`` atomically: ``record`` (:meth:`CandidateRecorder.finish`),
    the case's preprocessing record ``props`` and the input image's ``geometry``."""
    path = Path(out_dir) / f"{case_id}{CANDIDATES_SUFFIX}"
    arrays = {k: np.asarray(record[k]) for k in ARRAY_KEYS}
    arrays["props"] = np.asarray(json.dumps({k: np.asarray(props[k]).tolist() for k in PROPS_KEYS}))
    arrays["geometry"] = np.asarray(json.dumps(geometry.to_dict()))

    def _write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    return write_atomic(path, _write)


def load_candidates(path: str | os.PathLike) -> dict:
    """Read a ``CASE_candidates.npz``: its arrays, ``props`` (dict) and ``geometry`` (:class:`Geometry`).

    Raises:
        ValueError: The file is not a candidates file (a key is missing, or it holds objects),
            naming the file.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in (*ARRAY_KEYS, "props", "geometry") if k not in z.files]
            if not missing:
                out = {k: z[k] for k in ARRAY_KEYS}
                out["props"] = json.loads(str(z["props"]))
                out["geometry"] = Geometry.from_dict(json.loads(str(z["geometry"])))
    except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: cannot read the candidates file: {e}") from None
    if missing:
        raise ValueError(f"{path}: not a candidates file: missing {', '.join(missing)}")
    n = len(out["scores"])
    if not (len(out["boxes"]) == len(out["labels"]) == len(out["weights"]) == len(out["group"]) == n) or (
            n and int(out["group"].max()) >= len(out["offsets"])) or len(out["group_tile"]) != len(out["offsets"]):
        raise ValueError(f"{path}: inconsistent candidates file: {n} scores, {len(out['boxes'])} boxes, "
                         f"{len(out['offsets'])} passes")
    return out


def fused_with(path: str | os.PathLike) -> tuple[float, float]:
    """(NMS IoU, WBC IoU) the prediction of a ``CASE_candidates.npz`` was fused with, read
    without decompressing the boxes.

    Raises:
        ValueError: The file cannot be read or lacks them, naming the file.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            return float(z["nms_iou"]), float(z["wbc_iou"])
    except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: cannot read the candidates file: {e}") from None
