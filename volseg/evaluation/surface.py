"""Surface metrics of one binary structure: 95th-percentile Hausdorff distance, average
symmetric surface distance and normalized surface Dice, all in mm.

Conventions (chosen to agree with MONAI's ``compute_hausdorff_distance``,
``compute_average_surface_distance`` and ``compute_surface_dice`` without sub-voxel
surfaces, which the tests check):

* The surface of a mask is the set of its voxels that have at least one of their six
  face neighbours outside the mask; voxels on the border of the array count as surface.
  (``mask ^ scipy.ndimage.binary_erosion(mask)``, as MONAI extracts edges.)
* Distances are Euclidean between voxel centres, scaled by the spacing (mm), from every
  surface voxel of one mask to the nearest surface voxel of the other, in both directions.
* HD95 is the larger of the two directed 95th percentiles (linear interpolation).
* Surface Dice at tolerance τ is the number of surface voxels of both masks lying within
  τ mm of the other surface, divided by the number of surface voxels of both masks.
* Both masks empty: every score is NaN. One mask empty: surface Dice 0, HD95 and ASSD
  NaN (no finite distance exists; they are left out of means and counted instead).
"""

from __future__ import annotations

import numpy as np

# Above this many box voxels per surface voxel, a k-d tree over the surface points beats
# two dense distance transforms of the box (measured on 2 cores: near-random masks, where
# almost every voxel is surface, cross over at about 4; organs and lesions lie far above).
_KDTREE_RATIO = 4


def bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Tight (z, y, x) slices around the non-zero voxels of ``mask``, or ``None`` if empty."""
    slices = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        if hit.size == 0:
            return None
        slices.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(slices)


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Bool mask of the surface voxels of ``mask`` (see the module docstring).

    Written with array slices rather than ``scipy.ndimage.binary_erosion`` because it
    gives the same voxels (six-neighbour cross, border value 0) about 3× faster.
    """
    mask = np.asarray(mask, dtype=bool)
    interior = mask.copy()
    for axis in range(mask.ndim):
        lo = [slice(None)] * mask.ndim
        hi = [slice(None)] * mask.ndim
        lo[axis], hi[axis] = slice(1, None), slice(None, -1)
        interior[tuple(lo)] &= mask[tuple(hi)]
        interior[tuple(hi)] &= mask[tuple(lo)]
        first = [slice(None)] * mask.ndim
        first[axis] = [0, -1]
        interior[tuple(first)] = False
    return mask & ~interior


def surface_distances(pred: np.ndarray, ref: np.ndarray,
                      spacing: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm between two non-empty masks.

    Args:
        pred: Predicted mask, bool (z, y, x), not empty.
        ref: Reference mask, bool (z, y, x), same shape, not empty.
        spacing: Voxel size (z, y, x) in mm.

    Returns:
        ``(pred_to_ref, ref_to_pred)``: for every surface voxel of ``pred`` the distance to
        the nearest surface voxel of ``ref``, and the other way round (float64 arrays).
    """
    box = bounding_box(pred | ref)
    pred, ref = pred[box], ref[box]
    edge_p, edge_r = surface_voxels(pred), surface_voxels(ref)
    n_edges = int(np.count_nonzero(edge_p)) + int(np.count_nonzero(edge_r))
    if pred.size > _KDTREE_RATIO * n_edges:
        return _kdtree_distances(edge_p, edge_r, spacing)
    return _edt_distances(edge_p, edge_r, spacing)


def _edt_distances(edge_p: np.ndarray, edge_r: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    # Every surface voxel lies inside the box, so the transform of the box is exact.
    from scipy.ndimage import distance_transform_edt

    sampling = tuple(float(s) for s in spacing)
    to_ref = distance_transform_edt(~edge_r, sampling=sampling)[edge_p]
    to_pred = distance_transform_edt(~edge_p, sampling=sampling)[edge_r]
    return to_ref, to_pred


def _kdtree_distances(edge_p: np.ndarray, edge_r: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    from scipy.spatial import cKDTree

    scale = np.asarray(spacing, dtype=np.float64)
    pts_p = np.argwhere(edge_p) * scale
    pts_r = np.argwhere(edge_r) * scale
    to_ref = cKDTree(pts_r, leafsize=32).query(pts_p, k=1)[0]
    to_pred = cKDTree(pts_p, leafsize=32).query(pts_r, k=1)[0]
    return to_ref, to_pred


def surface_metrics(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, float, float],
                    tolerance_mm: float = 1.0) -> dict[str, float]:
    """HD95, ASSD and surface Dice of two binary masks.

    Args:
        pred: Predicted mask, bool (z, y, x).
        ref: Reference mask, bool (z, y, x), same shape.
        spacing: Voxel size (z, y, x) in mm.
        tolerance_mm: Surface Dice tolerance τ in mm.

    Returns:
        ``hd95_mm``, ``assd_mm`` and ``surface_dice`` (see the module docstring for
        empty masks).
    """
    any_p, any_r = bool(pred.any()), bool(ref.any())
    nan = float("nan")
    if not (any_p and any_r):
        return {"surface_dice": nan if not (any_p or any_r) else 0.0, "hd95_mm": nan, "assd_mm": nan}
    to_ref, to_pred = surface_distances(pred, ref, spacing)
    n = to_ref.size + to_pred.size
    within = np.count_nonzero(to_ref <= tolerance_mm) + np.count_nonzero(to_pred <= tolerance_mm)
    return {
        "surface_dice": float(within / n),
        "hd95_mm": float(max(np.percentile(to_ref, 95), np.percentile(to_pred, 95))),
        "assd_mm": float((to_ref.sum() + to_pred.sum()) / n),
    }
