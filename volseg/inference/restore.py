"""Putting predictions back on the input grid: resampling to the cropped shape, un-cropping."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

SLAB_VOXELS = 1 << 24  # output voxels × channels resampled at once


def resample_logits(logits: torch.Tensor, shape: tuple[int, int, int] | list[int]) -> torch.Tensor:
    """Trilinear resampling of (K, z, y, x) logits to (K, *shape), in z-slabs of the output.

    Each output slab reads only the input slices it needs (plus one on each side), so the
    temporary memory is bounded by the slab, not by the volume. Results equal one
    ``F.interpolate(..., align_corners=False)`` call over the whole volume.
    """
    shape = tuple(int(s) for s in shape)
    if tuple(logits.shape[1:]) == shape:
        return logits
    k, zin = logits.shape[0], logits.shape[1]
    out = torch.empty((k, *shape), dtype=logits.dtype, device=logits.device)
    scale = zin / shape[0]
    per_slice = k * shape[1] * shape[2]
    step = max(1, SLAB_VOXELS // max(per_slice, 1))
    for z0 in range(0, shape[0], step):
        z1 = min(shape[0], z0 + step)
        # input coordinates of output slices z0..z1-1 (align_corners=False convention)
        lo = max(0, int(np.floor((z0 + 0.5) * scale - 0.5)))
        hi = min(zin, int(np.ceil((z1 - 0.5) * scale - 0.5)) + 1)
        block = logits[:, lo:hi].float()
        # sample at exact source coordinates with grid_sample to match the full interpolation
        zs = (torch.arange(z0, z1, device=logits.device, dtype=torch.float64) + 0.5) * scale - 0.5
        zs = zs.clamp(0, zin - 1) - lo
        zf = zs.floor().long().clamp(max=block.shape[1] - 1)
        zc = (zf + 1).clamp(max=block.shape[1] - 1)
        w = (zs - zf).to(block.dtype)[None, :, None, None]
        inplane = F.interpolate(block[None], size=(block.shape[1], *shape[1:]), mode="trilinear",
                                align_corners=False)[0]
        out[:, z0:z1] = (inplane[:, zf] * (1 - w) + inplane[:, zc] * w).to(logits.dtype)
    return out


def uncrop(array: np.ndarray, box: list[list[int]], full_shape: tuple[int, ...] | list[int],
           fill: float | int = 0) -> np.ndarray:
    """Place ``array`` (..., z, y, x) at ``box`` inside a new array of spatial shape ``full_shape``."""
    out = np.full((*array.shape[:-3], *full_shape), fill, dtype=array.dtype)
    sl = tuple(slice(a, b) for a, b in box)
    out[(Ellipsis, *sl)] = array
    return out
