"""Putting predictions back on the input grid: resampling to the cropped shape, un-cropping."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

SLAB_VOXELS = 1 << 24  # output voxels × channels resampled at once


def _slab_bounds(n_out: int, per_slice: int) -> list[tuple[int, int]]:
    step = max(1, SLAB_VOXELS // max(per_slice, 1))
    return [(z0, min(n_out, z0 + step)) for z0 in range(0, n_out, step)]


def _resample_slab(logits: torch.Tensor, shape: tuple[int, int, int], z0: int, z1: int) -> torch.Tensor:
    """Output slices ``z0:z1`` of the trilinear resampling of (K, z, y, x) ``logits`` to ``shape``, float32.

    Reads only the input slices those outputs need (plus one on each side); equal to the same
    slices of one ``F.interpolate(..., mode="trilinear", align_corners=False)`` over the volume.
    """
    zin = logits.shape[1]
    scale = zin / shape[0]
    # input coordinates of output slices z0..z1-1 (align_corners=False convention)
    lo = max(0, int(np.floor((z0 + 0.5) * scale - 0.5)))
    hi = min(zin, int(np.ceil((z1 - 0.5) * scale - 0.5)) + 1)
    block = logits[:, lo:hi].float()
    zs = (torch.arange(z0, z1, device=logits.device, dtype=torch.float64) + 0.5) * scale - 0.5
    zs = zs.clamp(0, zin - 1) - lo
    zf = zs.floor().long().clamp(max=block.shape[1] - 1)
    zc = (zf + 1).clamp(max=block.shape[1] - 1)
    w = (zs - zf).to(block.dtype)[None, :, None, None]
    inplane = F.interpolate(block[None], size=(block.shape[1], *shape[1:]), mode="trilinear", align_corners=False)[0]
    return inplane[:, zf] * (1 - w) + inplane[:, zc] * w


def resample_logits(logits: torch.Tensor, shape: tuple[int, int, int] | list[int]) -> torch.Tensor:
    """Trilinear resampling of (K, z, y, x) logits to (K, *shape), in z-slabs of the output.

    Each output slab reads only the input slices it needs (plus one on each side), so the
    temporary memory is bounded by the slab, not by the volume. Results equal one
    ``F.interpolate(..., align_corners=False)`` call over the whole volume.
    """
    shape = tuple(int(s) for s in shape)
    if tuple(logits.shape[1:]) == shape:
        return logits
    out = torch.empty((logits.shape[0], *shape), dtype=logits.dtype, device=logits.device)
    for z0, z1 in _slab_bounds(shape[0], logits.shape[0] * shape[1] * shape[2]):
        out[:, z0:z1] = _resample_slab(logits, shape, z0, z1).to(logits.dtype)
    return out


def resample_and_finalize(logits: torch.Tensor, shape: tuple[int, int, int] | list[int], mode: str = "softmax",
                          return_probabilities: bool = False, return_uncertainty: bool = False,
                          backend: str = "auto"):
    """Resample (K, z, y, x) averaged logits to ``shape`` and finalize them, one z-slab at a time.

    Same result as ``finalize(resample_logits(logits, shape), ...)``, but the resampled
    float logits exist only one slab at a time: besides the outputs (uint8 labels, fp16
    maps), memory grows with the slab, not with K × the output volume.

    Returns:
        A :class:`volseg.kernels.finalize.Finalized` of spatial shape ``shape``.
    """
    from volseg.kernels.finalize import allocate_outputs, finalize

    shape = tuple(int(s) for s in shape)
    k = logits.shape[0]
    out = allocate_outputs(k, shape, logits.device, mode, return_probabilities, return_uncertainty)
    for z0, z1 in _slab_bounds(shape[0], k * shape[1] * shape[2]):
        part = finalize(_resample_slab(logits, shape, z0, z1), mode=mode, return_probabilities=return_probabilities,
                        return_uncertainty=return_uncertainty, backend=backend)
        for name in ("labels", "max_prob", "entropy"):
            if getattr(out, name) is not None:
                getattr(out, name)[z0:z1] = getattr(part, name)
        if out.probabilities is not None:
            out.probabilities[:, z0:z1] = part.probabilities
    return out


def uncrop(array: np.ndarray, box: list[list[int]], full_shape: tuple[int, ...] | list[int],
           fill: float | int = 0) -> np.ndarray:
    """Place ``array`` (..., z, y, x) at ``box`` inside a new array of spatial shape ``full_shape``."""
    out = np.full((*array.shape[:-3], *full_shape), fill, dtype=array.dtype)
    sl = tuple(slice(a, b) for a, b in box)
    out[(Ellipsis, *sl)] = array
    return out
