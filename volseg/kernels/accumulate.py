"""Weighted accumulation of tile logits into an fp32 accumulator.

Two implementations that agree to float rounding: :func:`accumulate_torch` (CPU and any
device) and :func:`accumulate_triton` (CUDA; the tests run it under ``TRITON_INTERPRET=1``),
which computes each voxel's weight on the fly from the three 1D Gaussians instead of
reading a patch-sized weight tensor. Tiles are added one after the other, and within one
tile every accumulator voxel is written by exactly one program, so results are the same
from run to run (no atomics).
"""

from __future__ import annotations

import torch

BLOCK = 1024


def accumulate_torch(acc: torch.Tensor, tiles: torch.Tensor, offsets: list[tuple[int, int, int]],
                     weight: torch.Tensor) -> None:
    """``acc[:, z:z+pz, y:y+py, x:x+px] += tile * weight`` for every tile, in place.

    Args:
        acc: float32 (K, Z, Y, X) accumulator.
        tiles: (B, K, pz, py, px) logits.
        offsets: B (z, y, x) tile origins inside ``acc``.
        weight: float32 (pz, py, px) patch weight (:func:`volseg.kernels.gaussian.patch_weight`).
    """
    pz, py, px = tiles.shape[2:]
    weighted = tiles.float() * weight
    for b, (z, y, x) in enumerate(offsets):
        acc[:, z:z + pz, y:y + py, x:x + px] += weighted[b]


def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def accumulate_kernel(acc_ptr, tile_ptr, wz_ptr, wy_ptr, wx_ptr, z0, y0, x0, Y, X, ZYX, PY, PX, PZYX,
                          BLOCK_SIZE: tl.constexpr):
        pid = tl.program_id(0)
        k = tl.program_id(1).to(tl.int64)
        offs = pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        mask = offs < PZYX
        pz = offs // (PY * PX)
        rem = offs % (PY * PX)
        py = rem // PX
        px = rem % PX
        w = tl.load(wz_ptr + pz, mask=mask, other=0.0) * tl.load(wy_ptr + py, mask=mask, other=0.0) \
            * tl.load(wx_ptr + px, mask=mask, other=0.0)
        v = tl.load(tile_ptr + k * PZYX + offs, mask=mask, other=0.0).to(tl.float32)
        dst = k * ZYX + (z0 + pz).to(tl.int64) * Y * X + (y0 + py) * X + (x0 + px)
        a = tl.load(acc_ptr + dst, mask=mask, other=0.0)
        tl.store(acc_ptr + dst, a + v * w, mask=mask)

    return accumulate_kernel


_KERNEL = None


def accumulate_triton(acc: torch.Tensor, tiles: torch.Tensor, offsets: list[tuple[int, int, int]],
                      wz: torch.Tensor, wy: torch.Tensor, wx: torch.Tensor) -> None:
    """Triton version of :func:`accumulate_torch`, weighting from the 1D Gaussians ``wz``, ``wy``, ``wx``."""
    global _KERNEL
    if _KERNEL is None:
        _KERNEL = _kernel()
    k, zs, ys, xs = acc.shape
    pz, py, px = tiles.shape[2:]
    tiles = tiles.contiguous()
    n = pz * py * px
    grid = ((n + BLOCK - 1) // BLOCK, k)
    for b, (z, y, x) in enumerate(offsets):
        _KERNEL[grid](acc, tiles[b], wz, wy, wx, z, y, x, ys, xs, zs * ys * xs, py, px, n, BLOCK_SIZE=BLOCK)
