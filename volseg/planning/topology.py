"""U-Net topology from spacing and patch size: pooling and kernel sizes per stage."""

from __future__ import annotations

import numpy as np

MIN_FEATURE_MAP = 4      # voxels per axis at the bottleneck, at least
MAX_STAGES = 6
KERNEL_3_IF_SPACING_WITHIN = 2.0  # an axis gets kernel 3 when its spacing < 2 × the finest


def determine_topology(spacing: list[float], patch_size: list[int], max_stages: int = MAX_STAGES,
                       min_feature_map: int = MIN_FEATURE_MAP) -> tuple[list[list[int]], list[list[int]]]:
    """Strides and kernel sizes per stage, (z, y, x) each.

    An axis is downsampled at a stage while its feature map stays at least
    ``2 * min_feature_map`` voxels long and its current spacing is less than twice the
    finest current spacing, so that anisotropic data is first pooled in-plane until the
    voxels are nearly isotropic. A kernel is 3 along an axis whose current spacing is
    within twice the finest, else 1 (no mixing across thick slices at full resolution).

    Args:
        spacing: Voxel spacing (z, y, x) in mm.
        patch_size: Patch size (z, y, x) in voxels.

    Returns:
        ``(strides, kernel_sizes)``: one (z, y, x) triple per stage; ``strides[0]`` is [1, 1, 1].
    """
    cur_spacing = np.asarray(spacing, dtype=float)
    cur_size = np.asarray(patch_size, dtype=int)
    strides, kernels = [[1, 1, 1]], [_kernel(cur_spacing)]
    while len(strides) < max_stages:
        finest = cur_spacing.min()
        pool = [(cur_size[a] >= 2 * min_feature_map) and (cur_spacing[a] < 2 * finest) for a in range(3)]
        if not any(pool):
            break
        stride = [2 if p else 1 for p in pool]
        cur_size = cur_size // np.asarray(stride)
        cur_spacing = cur_spacing * np.asarray(stride)
        strides.append(stride)
        kernels.append(_kernel(cur_spacing))
    return strides, kernels


def _kernel(spacing: np.ndarray) -> list[int]:
    finest = spacing.min()
    return [3 if s < KERNEL_3_IF_SPACING_WITHIN * finest else 1 for s in spacing]


def total_stride(strides: list[list[int]]) -> list[int]:
    """Product of the strides per axis (z, y, x): the patch must be a multiple of it."""
    return np.prod(np.asarray(strides), axis=0).astype(int).tolist()


def features_per_stage(n_stages: int, base: int, maximum: int) -> list[int]:
    """``base`` features doubling per stage, capped at ``maximum``."""
    return [int(min(base * 2 ** s, maximum)) for s in range(n_stages)]
