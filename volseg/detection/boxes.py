"""Box helpers for numpy arrays and torch tensors, without compiled extensions.

Box format everywhere in volseg: ``(z0, y0, x0, z1, y1, x1)`` in voxels, half-open: a box
holds the voxels ``z0 <= z < z1``, ``y0 <= y < y1``, ``x0 <= x < x1``, so its extent is
``z1 - z0`` voxels and voxel ``i`` spans ``[i, i + 1)``. Coordinates may be fractional
(predicted boxes); an array of boxes is (N, 6).

MONAI's ``monai.data.box_utils`` (used here for IoU) names its 3D standard mode
``xyzxyz``: ``(x1, y1, z1, x2, y2, z2)``. Its IoU and NMS only compare coordinate ``i``
with coordinate ``i`` and ``i + 3`` of the other box, so they are invariant to the order
of the axes as long as both arguments use the same order: volseg boxes go in unchanged,
and MONAI's ``TO_REMOVE = 0`` matches the half-open convention (extent = max - min).
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch

Array = Union[np.ndarray, torch.Tensor]


def check_boxes(boxes: Array, name: str = "boxes") -> None:
    """Raise when ``boxes`` is not (N, 6) in (z0, y0, x0, z1, y1, x1) voxels."""
    if boxes.ndim != 2 or boxes.shape[1] != 6:
        raise ValueError(f"{name}: expected (N, 6) boxes (z0, y0, x0, z1, y1, x1), got shape {tuple(boxes.shape)}")


def _like(values: Sequence[float] | np.ndarray, boxes: Array) -> Array:
    """``values`` as an array of the container (and device) of ``boxes``."""
    arr = np.asarray(values)
    if isinstance(boxes, torch.Tensor):
        dtype = boxes.dtype if boxes.dtype.is_floating_point or arr.dtype.kind in "iu" else torch.float64
        return torch.as_tensor(arr, device=boxes.device).to(dtype)
    return arr


def _copy(boxes: Array) -> Array:
    return boxes.clone() if isinstance(boxes, torch.Tensor) else np.array(boxes, copy=True)


def boxes_from_instances(instance_map: np.ndarray, ids: Sequence[int] | None = None) -> np.ndarray:
    """Tight boxes of the instances of an instance map.

    Args:
        instance_map: int (Z, Y, X) map, 0 background, ``k > 0`` instance ``k``.
        ids: Instance ids to box, in the order wanted; all non-zero ids, ascending, when ``None``.

    Returns:
        int64 (N, 6) boxes (z0, y0, x0, z1, y1, x1) in voxels, half-open, in ``ids`` order.

    Raises:
        ValueError: The map is not a 3D integer array, holds negative values, or an id is
            not positive or absent from the map.

    Example:
        >>> m = np.zeros((4, 5, 6), int); m[1:3, 2, 0:4] = 7
        >>> boxes_from_instances(m).tolist()
        [[1, 2, 0, 3, 3, 4]]
    """
    from scipy import ndimage

    labels = np.asarray(instance_map)
    if labels.ndim != 3 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"instance_map: expected a 3D integer array (Z, Y, X), got {labels.dtype} {labels.shape}")
    if labels.size and labels.min() < 0:
        raise ValueError(f"instance_map: instance ids must be >= 0, found {int(labels.min())}")
    wanted = np.unique(labels[labels > 0]) if ids is None else np.asarray(ids, dtype=np.int64).reshape(-1)
    if len(wanted) == 0:
        return np.zeros((0, 6), dtype=np.int64)
    if wanted.min() <= 0:
        raise ValueError(f"ids: instance ids must be positive, got {wanted.tolist()}")
    found = ndimage.find_objects(labels, max_label=int(wanted.max()))
    missing = [int(i) for i in wanted if found[i - 1] is None]
    if missing:
        raise ValueError(f"ids: instances {missing[:10]} do not occur in the instance map")
    return np.asarray([[s.start for s in found[i - 1]] + [s.stop for s in found[i - 1]] for i in wanted],
                      dtype=np.int64)


def flip_boxes(boxes: Array, axes: Sequence[int], shape: Sequence[int]) -> Array:
    """Boxes predicted on a volume mirrored along ``axes``, mapped back to the unmirrored volume.

    Mirroring is its own inverse, so the same call also mirrors boxes forwards. Along a
    flipped axis of length ``n``, ``[a, b)`` becomes ``[n - b, n - a)``.

    Args:
        boxes: (N, 6) boxes (z0, y0, x0, z1, y1, x1) in voxels, half-open.
        axes: Mirrored spatial axes, 0 = z, 1 = y, 2 = x (not tensor dims of a batch).
        shape: Shape (Z, Y, X) of the mirrored volume (or tile).

    Returns:
        (N, 6) boxes, same container and dtype.
    """
    check_boxes(boxes)
    axes = list(axes)
    if any(a not in (0, 1, 2) for a in axes) or len(set(axes)) != len(axes):
        raise ValueError(f"axes: expected distinct spatial axes among 0 (z), 1 (y), 2 (x), got {axes}")
    out = _copy(boxes)
    for a in axes:
        out[:, a] = shape[a] - boxes[:, a + 3]
        out[:, a + 3] = shape[a] - boxes[:, a]
    return out


def shift_boxes(boxes: Array, offset_zyx: Sequence[float]) -> Array:
    """Boxes moved by ``offset_zyx`` voxels, e.g. from tile to volume coordinates (tile origin).

    Args:
        boxes: (N, 6) boxes (z0, y0, x0, z1, y1, x1) in voxels, half-open.
        offset_zyx: Offset (z, y, x) in voxels added to both corners.

    Returns:
        (N, 6) boxes, same container (integer boxes stay integer for integer offsets).
    """
    check_boxes(boxes)
    offset = list(offset_zyx)
    if len(offset) != 3:
        raise ValueError(f"offset_zyx: expected 3 values (z, y, x), got {offset}")
    return boxes + _like(offset * 2, boxes)


def scale_boxes(boxes: Array, factor_zyx: Sequence[float]) -> Array:
    """Boxes on a grid resampled by ``factor_zyx`` (new voxels per old voxel, per axis).

    Corners scale about the grid origin: ``[a, b)`` becomes ``[a * f, b * f)``. From spacing
    ``s_old`` to ``s_new`` the factor is ``s_old / s_new``; ``1 / f`` maps back.

    Args:
        boxes: (N, 6) boxes (z0, y0, x0, z1, y1, x1) in voxels, half-open.
        factor_zyx: Positive factors (z, y, x).

    Returns:
        (N, 6) float boxes, same container.
    """
    check_boxes(boxes)
    factor = list(factor_zyx)
    if len(factor) != 3 or not all(f > 0 for f in factor):
        raise ValueError(f"factor_zyx: expected 3 positive factors (z, y, x), got {factor}")
    return boxes * _like(np.asarray(factor * 2, dtype=float), boxes)


def clip_boxes(boxes: Array, shape: Sequence[int]) -> Array:
    """Boxes clipped to a volume of ``shape`` (Z, Y, X); a box outside it becomes empty (zero extent).

    Args:
        boxes: (N, 6) boxes (z0, y0, x0, z1, y1, x1) in voxels, half-open.
        shape: Volume shape (Z, Y, X).

    Returns:
        (N, 6) boxes with ``0 <= z0 <= z1 <= Z`` and likewise for y and x, same container.
    """
    check_boxes(boxes)
    upper = list(shape) * 2
    if isinstance(boxes, torch.Tensor):
        return torch.minimum(boxes.clamp(min=0), torch.as_tensor(upper, dtype=boxes.dtype, device=boxes.device))
    return np.clip(boxes, 0, np.asarray(upper, dtype=boxes.dtype))


def box_volume(boxes: Array) -> Array:
    """Volume of every box in voxels; ``(z1 - z0)(y1 - y0)(x1 - x0)``, 0 for inverted extents.

    Args:
        boxes: (N, 6) boxes (z0, y0, x0, z1, y1, x1) in voxels, half-open.

    Returns:
        (N,) volumes, same container.
    """
    check_boxes(boxes)
    extent = boxes[:, 3:] - boxes[:, :3]
    extent = extent.clamp(min=0) if isinstance(extent, torch.Tensor) else np.maximum(extent, 0)
    return extent[:, 0] * extent[:, 1] * extent[:, 2]


def box_iou(boxes1: Array, boxes2: Array) -> np.ndarray:
    """Pairwise IoU of two sets of boxes (MONAI's ``box_iou``, valid for any shared axis order).

    Args:
        boxes1: (N, 6) boxes (z0, y0, x0, z1, y1, x1) in voxels, half-open.
        boxes2: (M, 6) boxes, same format.

    Returns:
        float64 (N, M) IoU, computed in float32 by MONAI; boxes of zero volume have IoU 0 with everything.

    Raises:
        ValueError: A box has a negative extent (MONAI checks).
    """
    from monai.data.box_utils import box_iou as monai_box_iou

    check_boxes(boxes1, "boxes1")
    check_boxes(boxes2, "boxes2")
    b1 = torch.as_tensor(np.ascontiguousarray(to_numpy(boxes1)), dtype=torch.float64)
    b2 = torch.as_tensor(np.ascontiguousarray(to_numpy(boxes2)), dtype=torch.float64)
    if len(b1) == 0 or len(b2) == 0:
        return np.zeros((len(b1), len(b2)))
    return monai_box_iou(b1, b2).numpy()


def to_numpy(values: Array) -> np.ndarray:
    """A numpy copy-or-view of a numpy array or a torch tensor on any device."""
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)
