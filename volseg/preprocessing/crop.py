"""Cropping to the non-zero region of a case."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

Box = list[list[int]]  # [[z0, z1], [y0, y1], [x0, x1]], half-open voxel ranges


def nonzero_mask(images: np.ndarray) -> np.ndarray:
    """Voxels where any channel is non-zero, with enclosed holes filled.

    Args:
        images: (C, Z, Y, X) array.

    Returns:
        (Z, Y, X) bool mask.
    """
    mask = np.any(images != 0, axis=0)
    if mask.all():  # nothing to fill, and CT volumes are usually non-zero everywhere
        return mask
    return ndimage.binary_fill_holes(mask)


def bbox_of(mask: np.ndarray) -> Box:
    """Half-open bounding box of ``mask`` ((Z, Y, X) bool); the whole volume when it is empty."""
    if not mask.any():
        return [[0, int(s)] for s in mask.shape]
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        nz = np.flatnonzero(mask.any(axis=other))
        box.append([int(nz[0]), int(nz[-1]) + 1])
    return box


def crop(array: np.ndarray, box: Box) -> np.ndarray:
    """Crop the last three axes of ``array`` to ``box``."""
    sl = tuple(slice(a, b) for a, b in box)
    return array[(Ellipsis, *sl)]


def box_shape(box: Box) -> list[int]:
    return [b - a for a, b in box]
