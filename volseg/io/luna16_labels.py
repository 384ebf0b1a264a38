"""Instance maps of one LUNA16-style scan: findings (world mm) drawn as spheres on its voxel grid.

Checks that every centre lies inside the image and that no two findings share a centre voxel,
then rasterises the findings as ids ``1..n`` and the excluded findings as further ids where
no finding is. Maps are int16 in (Z, Y, X) order, on the grid of the scan's
:class:`~volseg.io.nifti.Geometry`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from volseg.errors import DatasetError
from volseg.io.luna16_csv import Finding
from volseg.io.nifti import Geometry
from volseg.io.world import centre_voxels, draw_spheres, world_to_voxel

__all__ = ["check_findings", "label_case"]


def label_case(geometry: Geometry, findings: Sequence[Finding], excluded: Sequence[Finding] = (),
               image_name: str = "image") -> tuple[np.ndarray, list[int], list[int | None]]:
    """The instance map of one scan.

    Findings get ids ``1..n`` in row order; excluded findings are drawn where no finding is
    and get the next ids, in row order, when at least one of their voxels remains.

    Returns:
        ``(label, ignore_ids, excluded_ids)``: int16 (Z, Y, X) instance map, the ids of the
        drawn excluded findings, and per excluded row its id (``None`` when fully covered).

    Raises:
        DatasetError: A centre lies outside the image, or two findings share a centre voxel.
    """
    check_findings(geometry, findings, excluded, image_name)
    label = draw_spheres([f.centre_xyz for f in findings], [f.diameter_mm for f in findings], geometry)
    if not excluded:
        return label, [], []
    extra = draw_spheres([f.centre_xyz for f in excluded], [f.diameter_mm for f in excluded], geometry)
    free = (label == 0) & (extra > 0)
    kept = np.unique(extra[free])
    lut = np.zeros(len(excluded) + 1, np.int16)
    lut[kept] = len(findings) + 1 + np.arange(len(kept))
    label[free] = lut[extra[free]]
    return label, [int(v) for v in lut[kept]], [int(v) or None for v in lut[1:]]


def check_findings(geometry: Geometry, findings: Sequence[Finding], excluded: Sequence[Finding] = (),
                   image_name: str = "image") -> None:
    """Raise a :class:`DatasetError` naming the first row (in file order) whose centre lies outside
    the grid, or the first finding whose centre voxel another finding of the scan already holds."""
    for f in sorted((*findings, *excluded), key=lambda f: (str(f.path), f.line)):
        _check_inside(geometry, f, image_name)
    voxels = [tuple(int(i) for i in v) for v in centre_voxels([f.centre_xyz for f in findings], geometry)]
    for i, v in enumerate(voxels):
        if v in voxels[:i]:
            j = voxels.index(v)
            raise DatasetError(findings[i].path, f"{findings[i].where()}: centre falls in the same voxel {v} of "
                               f"{image_name} as line {findings[j].line}; remove the duplicate row")


def _check_inside(geometry: Geometry, f: Finding, image_name: str) -> None:
    v = centre_voxels(f.centre_xyz, geometry)[0]
    if ((v < 0) | (v >= geometry.shape)).any():
        idx = np.round(world_to_voxel(f.centre_xyz, geometry), 2)
        x, y, z = f.centre_xyz
        raise DatasetError(f.path, f"{f.where()}: centre ({x:g}, {y:g}, {z:g}) mm lies outside its image "
                           f"{image_name} (voxel (z, y, x) {tuple(float(i) for i in idx)}, shape {tuple(geometry.shape)})")
