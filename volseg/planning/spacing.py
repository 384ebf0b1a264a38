"""Target spacing of the full-resolution configuration."""

from __future__ import annotations

import numpy as np

ANISOTROPY_RATIO = 3.0


def determine_target_spacing(median_spacing: list[float], p10_spacing: list[float],
                             median_shape: list[float]) -> tuple[list[float], bool]:
    """Pick the spacing every case is resampled to.

    Rule: the median spacing per axis. When the coarsest axis is more than
    ``ANISOTROPY_RATIO`` times coarser than the finest one *and* it has at most a third
    as many voxels as the other axes (thick-slice data), that axis takes the 10th
    percentile of its spacings instead (finer, so that the thin-slice cases keep their
    detail), but stays at least as coarse as the other axes.

    Args:
        median_spacing: Median spacing (z, y, x) in mm over the cases.
        p10_spacing: 10th percentile spacing (z, y, x) in mm.
        median_shape: Median shape (z, y, x) after cropping, in voxels.

    Returns:
        ``(spacing, anisotropic)``: spacing (z, y, x) in mm, and whether the thick-slice
        rule applied.
    """
    spacing = np.asarray(median_spacing, dtype=float)
    shape = np.asarray(median_shape, dtype=float)
    worst = int(np.argmax(spacing))
    others = [a for a in range(3) if a != worst]
    aniso_spacing = spacing[worst] > ANISOTROPY_RATIO * spacing[others].min()
    aniso_voxels = shape[worst] * ANISOTROPY_RATIO <= shape[others].min()
    if aniso_spacing and aniso_voxels:
        floor = spacing[others].max() * 1.00001
        spacing[worst] = max(float(p10_spacing[worst]), floor)
        return spacing.tolist(), True
    return spacing.tolist(), False


def resampled_shape(shape: list[float], spacing: list[float], target: list[float]) -> list[int]:
    """Shape (z, y, x) of a grid of ``shape`` at ``spacing`` after resampling to ``target``."""
    return [max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target)]
