"""Patch size, topology and batch size under a memory or compute budget."""

from __future__ import annotations

from typing import Callable

import numpy as np

from volseg.planning.topology import determine_topology, features_per_stage, total_stride

START_VOXELS = 256 ** 3
MIN_BATCH = 2
MAX_DATASET_FRACTION_PER_BATCH = 0.05


def initial_patch(spacing: list[float], median_shape: list[float], max_voxels: int = START_VOXELS) -> list[float]:
    """A patch isotropic in mm with ``max_voxels`` voxels, clipped to the median shape."""
    aspect = 1.0 / np.asarray(spacing, dtype=float)
    patch = aspect * (max_voxels / np.prod(aspect)) ** (1 / 3)
    return np.minimum(patch, np.asarray(median_shape, dtype=float)).tolist()


def network_for(spacing: list[float], patch: list[float], base_features: int, max_features: int,
                architecture: str) -> tuple[dict, list[int]]:
    """Topology for ``patch`` and the patch rounded to a multiple of its total stride."""
    strides, kernels = determine_topology(spacing, [int(p) for p in patch])
    step = total_stride(strides)
    rounded = [max(s, int(round(p / s)) * s) for p, s in zip(patch, step)]
    n = len(strides)
    network = {"architecture": architecture,
               "features_per_stage": features_per_stage(n, base_features, max_features),
               "kernel_sizes": kernels, "strides": strides,
               "n_conv_per_stage": [2] * n, "n_conv_per_stage_decoder": [2] * (n - 1),
               "norm": "instance", "activation": "leaky_relu", "deep_supervision": True}
    return network, rounded


def fit_patch(spacing: list[float], median_shape: list[float], fits: Callable[[dict, list[int]], bool],
              base_features: int = 32, max_features: int = 320, architecture: str = "unet",
              max_voxels: int = START_VOXELS) -> tuple[list[int], dict]:
    """Shrink a patch until ``fits(network, patch)`` holds at the minimum batch size.

    Each step shrinks the axis whose patch is largest relative to the median shape by
    one multiple of its total stride (the topology is re-derived after each step).

    Args:
        spacing: Target spacing (z, y, x) in mm.
        median_shape: Median shape (z, y, x) in voxels at that spacing.
        fits: Budget test for a candidate network and patch.

    Returns:
        ``(patch_size, network)``.
    """
    patch = initial_patch(spacing, median_shape, max_voxels)
    network, rounded = network_for(spacing, patch, base_features, max_features, architecture)
    for _ in range(1000):
        if fits(network, rounded):
            break
        step = total_stride(network["strides"])
        ratio = np.asarray(rounded, dtype=float) / np.asarray(median_shape, dtype=float)
        order = np.argsort(-ratio)
        axis = next((int(a) for a in order if rounded[a] > step[a]), None)
        if axis is None:
            break  # the smallest patch the topology allows
        patch = list(rounded)
        patch[axis] = rounded[axis] - step[axis]
        network, rounded = network_for(spacing, patch, base_features, max_features, architecture)
    return rounded, network


def batch_size_for(per_sample_gb: float, fixed_gb: float, budget_gb: float, patch: list[int],
                   median_shape: list[float], num_cases: int) -> int:
    """Largest batch inside ``budget_gb``, at least 2, covering at most 5% of the dataset's voxels."""
    by_memory = int((budget_gb - fixed_gb) // max(per_sample_gb, 1e-9))
    dataset_voxels = float(np.prod(median_shape)) * num_cases
    by_data = int(MAX_DATASET_FRACTION_PER_BATCH * dataset_voxels // float(np.prod(patch)))
    return max(MIN_BATCH, min(by_memory, by_data))
