"""Spatial augmentation that reads only the part of the volume it needs.

Written by hand around batchgenerators' coordinate helpers (mesh, elastic deformation,
rotation, scaling, ``interpolate_img``) rather than using its ``SpatialTransform``, because
that transform needs the whole enlarged window in memory and converts it to float64 per
channel (and per label for the label map): for a 128³ patch the window that no rotation or
zoom can leave is ~300³ voxels, 13× the patch, while ~64% of the samples are not transformed
at all.  Here the transformed coordinate grid is computed first and only its bounding box
(plus a margin for the spline) is read from the volume; outside the volume the image and
label are 0.  The random draws follow ``augment_spatial`` (per-sample probabilities; each
rotation axis drawn independently; scale below 1 or above 1 with equal chance).

Resampling at linear order (the default) runs through ``torch.nn.functional.grid_sample``:
the image trilinearly, the label map as one indicator per label present, interpolated and
arg-maxed (a smooth label boundary, not a nearest-neighbour staircase).  This is 10–20× cheaper
than per-channel ``scipy.ndimage.map_coordinates``, which matters when augmentation shares
the CPU with training.  Spline orders above 1 use batchgenerators' ``interpolate_img``.

One coordinate grid per sample serves every channel, so co-registered channels stay aligned.
With ``dummy_2d_axis`` set the grid is 2D (the plane of the two other axes) and is applied to
every slice along that axis, as nnU-Net's dummy-2D augmentation does.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from batchgenerators.augmentations.utils import (
    create_zero_centered_coordinate_mesh,
    elastic_deform_coordinates,
    interpolate_img,
    rotate_coords_2d,
    rotate_coords_3d,
    scale_coords,
)
from batchgenerators.transforms.abstract_transforms import AbstractTransform

from volseg.data.sampling import Window

# voxels of real data kept around the grid's bounding box: the cubic spline's prefilter is
# global, and a cut 8 voxels away changes interior values by < 0.27**8 ≈ 3e-5 of the edge value
SPLINE_MARGIN = 8


def _normalized_grid(coords: np.ndarray, box: Sequence[int]) -> torch.Tensor:
    """Voxel coordinates (d, *out) in a box of size ``box`` → grid_sample's (1, *out, d) in [-1, 1], last axis reversed."""
    axes = [2 * coords[i] / max(box[i] - 1, 1) - 1 for i in range(len(box))]
    return torch.from_numpy(np.stack(axes[::-1], axis=-1).astype(np.float32))[None]


def resample_linear(image: np.ndarray, seg: np.ndarray, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Linear resampling of an image and a label map at the same coordinates.

    Args:
        image: (C, *box) float32, 2D or 3D box.
        seg: (L, *box) integer label maps.
        coords: (d, *out) voxel coordinates into the box (d = 2 or 3), float.

    Returns:
        (C, *out) float32 (zero outside the box) and (L, *out) int16: for every output voxel the
        label whose indicator, linearly interpolated, is largest (the smallest label present
        where the coordinates leave the box).
    """
    grid = _normalized_grid(coords, image.shape[1:])
    sample = lambda v: F.grid_sample(v[None], grid, mode="bilinear", padding_mode="zeros",
                                     align_corners=True)[0]
    with torch.no_grad():
        out_i = sample(torch.from_numpy(np.ascontiguousarray(image, np.float32))).numpy()
        labels = np.unique(seg)
        if len(labels) == 1:
            return out_i, np.full((seg.shape[0], *coords.shape[1:]), labels[0], np.int16)
        # indicators of all labels but the first; the first's interpolated indicator is 1 - their sum
        hot = seg[:, None] == labels[1:].reshape(1, -1, *[1] * (seg.ndim - 1))  # (L, K - 1, *box)
        rest = sample(torch.from_numpy(hot.reshape(-1, *seg.shape[1:])).float()).numpy()
        rest = rest.reshape(seg.shape[0], len(labels) - 1, *rest.shape[1:])
        scores = np.concatenate([1 - rest.sum(1, keepdims=True), rest], axis=1)
        pick = scores.argmax(1)
    return out_i, labels[pick].astype(np.int16)


class WindowSpatialTransform(AbstractTransform):
    """Rotation, scaling and elastic deformation of patches read from :class:`Window` s.

    Args:
        patch_size: Output patch size (z, y, x).
        params: Augmentation parameters (:func:`volseg.data.augmentation.default_augmentation`),
            or None: no transform, just read the patch (validation).

    Input batch: ``{"windows": list of b Window, ...}``, or eager ``{"data": (b, C, *s),
    "seg": (b, 1, *s)}`` whose centre is the patch centre.  Output: ``"data"`` float32
    (b, C, pz, py, px) and ``"seg"`` int16 (b, 1, pz, py, px) (``"windows"`` removed).
    """

    def __init__(self, patch_size: Sequence[int], params: dict | None = None) -> None:
        self.patch_size = np.asarray(patch_size, dtype=np.int64)
        self.params = params
        self.axis = None if params is None else params.get("dummy_2d_axis")
        self.plane = [a for a in range(3) if a != self.axis]

    def _coords(self) -> np.ndarray | None:
        """Zero-centred sample grid (d, *plane patch), or None when this sample is not transformed."""
        p = self.params
        if p is None:
            return None
        coords = create_zero_centered_coordinate_mesh(self.patch_size[self.plane])
        modified = False
        el, rot, sc = p["elastic"], p["rotation"], p["scaling"]
        if el["p"] > 0 and np.random.uniform() < el["p"]:
            coords = elastic_deform_coordinates(coords, np.random.uniform(*el["alpha"]),
                                                np.random.uniform(*el["sigma"]))
            modified = True
        if rot["p"] > 0 and np.random.uniform() < rot["p"]:
            rad = np.deg2rad(rot["degrees"])
            if self.axis is None:
                coords = rotate_coords_3d(coords, *[np.random.uniform(*r) for r in rad])
            else:
                coords = rotate_coords_2d(coords, np.random.uniform(*rad[self.axis]))
            modified = True
        if sc["p"] > 0 and np.random.uniform() < sc["p"]:
            n = len(self.plane) if sc.get("independent_axes", False) else 1
            lo, hi = sc["range"]
            f = [np.random.uniform(lo, 1) if np.random.random() < 0.5 and lo < 1 else np.random.uniform(max(lo, 1), hi)
                 for _ in range(n)]
            coords = scale_coords(coords, f if n > 1 else f[0])
            modified = True
        return coords if modified else None

    def _read_transformed(self, window: Window, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        interp = self.params["interpolation"]
        order, order_seg = int(interp["image_order"]), int(interp["label_order"])
        coords = coords + window.center[self.plane].reshape(-1, *[1] * (coords.ndim - 1))
        margin = SPLINE_MARGIN if order > 1 else 1
        lo = np.asarray(window.lower, np.int64).copy()
        hi = lo + self.patch_size
        flat = coords.reshape(len(self.plane), -1)
        lo[self.plane] = np.floor(flat.min(axis=1)).astype(np.int64) - margin
        hi[self.plane] = np.ceil(flat.max(axis=1)).astype(np.int64) + 1 + margin
        image, seg = window.read(lo, hi)
        coords -= lo[self.plane].reshape(-1, *[1] * (coords.ndim - 1))
        if self.axis is not None:  # fold the coarse axis into the channels: (C, n, h, w) → (C·n, h, w)
            image, seg = (np.moveaxis(a, 1 + self.axis, 1) for a in (image, seg))
            shape_i, shape_s = image.shape[:2], seg.shape[:2]
            image, seg = image.reshape(-1, *image.shape[2:]), seg.reshape(-1, *seg.shape[2:])
        if order == 1 and order_seg == 1:
            out_i, out_s = resample_linear(image, seg, coords)
        else:
            out_i = np.stack([interpolate_img(c, coords, order, "constant", cval=0.0) for c in image])
            out_s = np.stack([interpolate_img(c, coords, order_seg, "constant", cval=0, is_seg=True) for c in seg])
        if self.axis is not None:
            out_i = np.moveaxis(out_i.reshape(*shape_i, *out_i.shape[1:]), 1, 1 + self.axis)
            out_s = np.moveaxis(out_s.reshape(*shape_s, *out_s.shape[1:]), 1, 1 + self.axis)
        return out_i.astype(np.float32, copy=False), out_s.astype(np.int16, copy=False)

    def transform_window(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """(image float32 (C, *patch), label int16 (1, *patch)) of one window."""
        coords = self._coords()
        if coords is None:
            lo = np.asarray(window.lower, np.int64)
            return window.read(lo, lo + self.patch_size)
        return self._read_transformed(window, coords)

    def _windows(self, batch: dict) -> list[Window]:
        if "windows" in batch:
            return batch.pop("windows")
        data, seg = batch.pop("data"), batch.pop("seg")
        lower = (np.asarray(data.shape[2:]) - self.patch_size) // 2
        return [Window(d, s, lower, self.patch_size) for d, s in zip(data, seg)]

    def __call__(self, **batch):
        windows = self._windows(batch)
        b, c = len(windows), windows[0].image.shape[0]
        data = np.zeros((b, c, *self.patch_size), np.float32)
        seg = np.zeros((b, 1, *self.patch_size), np.int16)
        for i, w in enumerate(windows):
            data[i], seg[i] = self.transform_window(w)
        batch["data"], batch["seg"] = data, seg
        return batch
