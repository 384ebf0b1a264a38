"""Tile positions and separable Gaussian importance weights.

The weight of voxel (z, y, x) inside a tile is ``wz[z] * wy[y] * wx[x]``, three 1D
Gaussians with σ = ``sigma_scale`` × patch size (0.125 = patch/8) centred on the tile.
Because the tile grid is Cartesian (every z start is combined with every y and x start),
the sum of weights that reaches voxel (z, y, x) of the volume is ``Nz[z] * Ny[y] * Nx[x]``,
with ``Na`` the 1D sum of the shifted 1D Gaussians along axis ``a``: the normalizer needs
three vectors, not a volume-sized count buffer.
"""

from __future__ import annotations

import math

import torch

MIN_WEIGHT = 1e-6  # per axis, relative to the centre: only guards against underflow (1e-18 at a corner)
# where a tile's Gaussian peaks: "middle", (patch - 1) / 2, symmetric; "half_index", voxel
# patch // 2, as nnU-Net v2 places it (half a voxel off the middle along even axes)
GAUSSIAN_CENTERS = ("middle", "half_index")
DEFAULT_GAUSSIAN_CENTER = "middle"


def tile_starts(size: int, patch: int, step_fraction: float) -> list[int]:
    """Evenly spaced tile starts along one axis: first at 0, last ending at ``size``.

    The number of tiles is the smallest that keeps the step at most ``step_fraction * patch``.
    ``size`` must be at least ``patch`` (pad smaller images first).
    """
    if size < patch:
        raise ValueError(f"axis of size {size} is smaller than the patch {patch}; pad it first")
    if size == patch:
        return [0]
    max_step = max(1, int(patch * step_fraction))
    n = math.ceil((size - patch) / max_step) + 1
    step = (size - patch) / (n - 1)
    return [int(round(i * step)) for i in range(n)]


def gaussian_1d(patch: int, sigma_scale: float, device: torch.device | str = "cpu",
                center: str = DEFAULT_GAUSSIAN_CENTER) -> torch.Tensor:
    """float32 (patch,) Gaussian centred on the tile (see :data:`GAUSSIAN_CENTERS`), 1 at the
    centre, at least ``MIN_WEIGHT``.

    Example:
        >>> int(gaussian_1d(4, 0.125, center="half_index").argmax())
        2
    """
    if center not in GAUSSIAN_CENTERS:
        raise ValueError(f"unknown Gaussian centre {center!r}; expected one of {', '.join(GAUSSIAN_CENTERS)}")
    sigma = max(patch * sigma_scale, 1e-6)
    middle = (patch - 1) / 2.0 if center == "middle" else float(patch // 2)
    coords = torch.arange(patch, dtype=torch.float64, device=device) - middle
    g = torch.exp(-0.5 * (coords / sigma) ** 2)
    return g.clamp_min(MIN_WEIGHT).to(torch.float32)


def normalizer_1d(size: int, starts: list[int], weight: torch.Tensor) -> torch.Tensor:
    """float32 (size,) sum of ``weight`` placed at every start along one axis."""
    out = torch.zeros(size, dtype=torch.float64, device=weight.device)
    for s in starts:
        out[s:s + weight.numel()] += weight.double()
    return out.to(torch.float32)


def patch_weight(wz: torch.Tensor, wy: torch.Tensor, wx: torch.Tensor) -> torch.Tensor:
    """The (pz, py, px) outer product of the three 1D weights (patch-sized, for the torch path)."""
    return wz[:, None, None] * wy[None, :, None] * wx[None, None, :]
