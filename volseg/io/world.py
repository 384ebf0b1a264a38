"""Voxel indices ↔ world coordinates: the one place volseg converts between them.

Inside volseg, arrays are (z, y, x) as ``SimpleITK.GetArrayFromImage`` gives them, and a
point in the array is a continuous voxel index in the same order, with voxel centres at
integer indices. The world is ITK's physical space: (x, y, z) in mm (LPS). For a
:class:`~volseg.io.nifti.Geometry` with ``spacing`` (z, y, x) mm, ``origin`` (x, y, z) mm
and ``direction`` D (3×3 row-major, column j = world direction of ITK index axis j, i.e.
x, y, z), ITK defines

    world_xyz = origin + D · diag(spacing_xyz) · index_ijk,   index_ijk = index_zyx reversed,

which :func:`voxel_to_world` computes exactly for any direction (rotations, flips, even
non-orthonormal) and anisotropic spacing, as ``TransformContinuousIndexToPhysicalPoint``
does (``Geometry.voxel_to_world`` / ``world_to_voxel`` give the same; the tests check both).

:func:`draw_spheres` rasterizes world-space spheres (LUNA16-style findings) on a grid.

Boxes: ``(z0, y0, x0, z1, y1, x1)`` in voxels, **half-open**, as everywhere in volseg
(:mod:`volseg.detection.boxes`, crop boxes, Python slices): the box holds the voxels
``z0 <= k < z1`` (and so on); in box coordinates voxel ``k`` spans ``[k, k + 1)``, so box
coordinate ``b`` is continuous index ``b - 0.5``. A box's centre is at index
``(z0 + z1) / 2 - 0.5`` and its physical extent along z is ``(z1 - z0) * spacing_z`` mm.
Boxes may hold fractional values (network outputs).
"""

from __future__ import annotations

import numpy as np

from volseg.io.nifti import Geometry


def voxel_to_world_affine(geometry: Geometry) -> np.ndarray:
    """The 4×4 affine that maps a homogeneous voxel index (z, y, x, 1) to world (x, y, z, 1) mm.

    Args:
        geometry: The voxel grid.

    Returns:
        float64 (4, 4) ``A`` with ``A @ [z, y, x, 1] = [x, y, z, 1]`` (world, mm).
    """
    d = np.asarray(geometry.direction, dtype=np.float64).reshape(3, 3)
    scaled = d * np.asarray(geometry.spacing[::-1], dtype=np.float64)  # D · diag(spacing_xyz)
    affine = np.eye(4)
    affine[:3, :3] = scaled[:, ::-1]  # columns reordered so the input is (z, y, x)
    affine[:3, 3] = np.asarray(geometry.origin, dtype=np.float64)
    return affine


def voxel_to_world(points_zyx: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Map continuous voxel indices to world points.

    Args:
        points_zyx: (..., 3) voxel indices (z, y, x), voxel centres at integers.
        geometry: The voxel grid the indices refer to.

    Returns:
        float64 (..., 3) world points (x, y, z) in mm.

    Example:
        >>> g = Geometry((10, 20, 30), (2.0, 1.0, 0.5), (10.0, 0.0, -5.0))
        >>> voxel_to_world([[1, 2, 4]], g)
        array([[12.,  2., -3.]])
    """
    p = _points(points_zyx, "points_zyx")
    a = voxel_to_world_affine(geometry)
    return p @ a[:3, :3].T + a[:3, 3]


def world_to_voxel(points_xyz: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Map world points to continuous voxel indices (the inverse of :func:`voxel_to_world`).

    Args:
        points_xyz: (..., 3) world points (x, y, z) in mm.
        geometry: The voxel grid to index.

    Returns:
        float64 (..., 3) continuous voxel indices (z, y, x); round them for the nearest voxel.
    """
    p = _points(points_xyz, "points_xyz")
    a = voxel_to_world_affine(geometry)
    return np.linalg.solve(a[:3, :3], (p - a[:3, 3]).reshape(-1, 3).T).T.reshape(p.shape)


def box_to_world(boxes_zyx: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Centres and diameters of voxel boxes, in world mm.

    Args:
        boxes_zyx: (N, 6) half-open voxel boxes ``(z0, y0, x0, z1, y1, x1)`` (see the module
            docstring).
        geometry: The voxel grid the boxes refer to.

    Returns:
        ``(centres, diameters)``: float64 (N, 3) world centres (x, y, z) in mm, and float64 (N,)
        diameters in mm, each the mean of the box's three physical edge lengths
        ``(z1 - z0) * spacing_z``, ``(y1 - y0) * spacing_y``, ``(x1 - x0) * spacing_x``, as
        LUNA16-style tables report one diameter per finding.

    Raises:
        ValueError: ``boxes_zyx`` is not (N, 6) or has a box with ``z1 < z0`` (or y, x).
    """
    boxes = np.asarray(boxes_zyx, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 6:
        raise ValueError(f"boxes_zyx: expected shape (N, 6) as (z0, y0, x0, z1, y1, x1), got {boxes.shape}")
    lo, hi = boxes[:, :3], boxes[:, 3:]
    if (hi < lo).any():
        raise ValueError(f"boxes_zyx: {int((hi < lo).any(1).sum())} boxes have an upper corner below the lower one")
    centres = voxel_to_world((lo + hi) / 2.0 - 0.5, geometry)
    diameters = ((hi - lo) * np.asarray(geometry.spacing, dtype=np.float64)).mean(axis=1)
    return centres, diameters


def world_to_box(centres_xyz: np.ndarray, diameters_mm: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Half-open voxel boxes that just enclose world-space spheres.

    The sphere of diameter ``d`` around ``c`` maps to an ellipsoid in index space; its exact
    bounding box has half-widths ``d / 2 * ||row k of M⁻¹||`` with ``M`` the index → world
    matrix (``d / 2 / spacing_k`` for orthonormal directions). For orthonormal directions
    :func:`box_to_world` returns ``c`` and ``d`` again.

    Args:
        centres_xyz: (N, 3) world centres (x, y, z) in mm.
        diameters_mm: (N,) diameters in mm.
        geometry: The voxel grid to index.

    Returns:
        float64 (N, 6) boxes ``(z0, y0, x0, z1, y1, x1)``, continuous, half-open.
    """
    centres = _points(centres_xyz, "centres_xyz").reshape(-1, 3)
    diameters = np.asarray(diameters_mm, dtype=np.float64).reshape(-1)
    if len(diameters) != len(centres):
        raise ValueError(f"diameters_mm: expected {len(centres)} values, one per centre, got {len(diameters)}")
    inv = np.linalg.inv(voxel_to_world_affine(geometry)[:3, :3])
    half = diameters[:, None] / 2.0 * np.linalg.norm(inv, axis=1)[None, :]
    c = world_to_voxel(centres, geometry) + 0.5
    return np.concatenate([c - half, c + half], axis=1)


def centre_voxels(centres_xyz: np.ndarray, geometry: Geometry) -> np.ndarray:
    """The voxel holding each world point: int64 (N, 3) indices (z, y, x), possibly outside the grid."""
    return np.floor(world_to_voxel(np.asarray(centres_xyz, float).reshape(-1, 3), geometry) + 0.5).astype(np.int64)


def draw_spheres(centres_xyz: np.ndarray, diameters_mm: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Draw world-space spheres into a (z, y, x) map: sphere ``n`` gets value ``n + 1``.

    A voxel belongs to a sphere when the world distance from its centre to the sphere's
    centre is at most the radius; distances are taken in mm through the full index → world
    map, so anisotropic spacing and rotated or flipped directions are exact. Where spheres
    overlap, a voxel goes to the smallest sphere (equal diameters: the nearest centre), so a
    small finding next to or inside a large one keeps its full extent; the voxel holding each
    centre always goes to its own sphere (so a sphere is never empty, unless a later centre
    falls in the same voxel). Parts outside the grid are dropped.

    Args:
        centres_xyz: (N, 3) world centres (x, y, z) in mm.
        diameters_mm: (N,) diameters in mm (0 draws only the centre voxel).
        geometry: The voxel grid.

    Returns:
        int16 (Z, Y, X) map, 0 outside every sphere.
    """
    centres = np.asarray(centres_xyz, float).reshape(-1, 3)
    radii = np.asarray(diameters_mm, float).reshape(-1) / 2.0
    if len(centres) > np.iinfo(np.int16).max or (radii < 0).any() or not np.isfinite(radii).all():
        raise ValueError(f"draw_spheres: expected at most 32767 spheres of finite diameter >= 0, got {len(radii)}")
    label = np.zeros(geometry.shape, np.int16)
    boxes = world_to_box(centres, 2 * radii, geometry)
    for n in range(len(centres)):
        lo = np.maximum(np.ceil(boxes[n, :3] - 0.5) - 1, 0).astype(int)
        hi = np.minimum(np.floor(boxes[n, 3:] - 0.5) + 2, geometry.shape).astype(int)
        if (hi <= lo).any():
            continue
        sub = label[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        idx = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), -1)
        world = voxel_to_world(idx, geometry)
        dist = np.linalg.norm(world - centres[n], axis=-1)
        mine = dist <= radii[n] * (1 + 1e-9)
        taken = np.nonzero(mine & (sub > 0))
        if taken[0].size:
            other = sub[taken].astype(int) - 1
            theirs = np.linalg.norm(world[taken] - centres[other], axis=-1)
            mine[taken] = (radii[n] < radii[other]) | ((radii[n] == radii[other]) & (dist[taken] < theirs))
        sub[mine] = n + 1
    for n, v in enumerate(centre_voxels(centres, geometry)):
        if ((v >= 0) & (v < geometry.shape)).all():
            label[tuple(v)] = n + 1
    return label


def _points(points: np.ndarray, name: str) -> np.ndarray:
    p = np.asarray(points, dtype=np.float64)
    if p.ndim == 0 or p.shape[-1] != 3:
        raise ValueError(f"{name}: expected shape (..., 3), got {p.shape}")
    return p
