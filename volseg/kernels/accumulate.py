"""Weighted accumulation of tile logits into an fp32 accumulator.

Two implementations that agree to float rounding: :func:`accumulate_torch` (CPU and any
device) and :func:`accumulate_triton` (CUDA; the tests run it under ``TRITON_INTERPRET=1``),
which computes each voxel's weight on the fly from the three 1D Gaussians instead of
reading a patch-sized weight tensor. Tiles are added one after the other, and within one
tile every accumulator voxel is written by exactly one program, so results are the same
from run to run (no atomics).

With uncertainty asked for, the ensemble members of a batch of tiles also keep tile-sized
sums of their probabilities and entropies (:func:`add_member_torch`, fused in
:func:`add_member_triton`), turned at commit into the expected entropy and the mutual
information of every tile voxel (:func:`member_entropy_terms`); these two maps are then
accumulated as two extra channels like the logits.
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
    for b, (z, y, x) in enumerate(offsets):  # one fused pass per tile, no weighted copy
        acc[:, z:z + pz, y:y + py, x:x + px].addcmul_(tiles[b], weight)


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


# --- Ensemble-member statistics (epistemic uncertainty) -------------------------------------------------
#
# Per batch of tiles, every ensemble member m (network × mirroring, already flipped back) adds its
# probabilities p_m and their entropy H(p_m) to running tile-sized sums; at commit,
# :func:`member_entropy_terms` turns the sums into the expected entropy E_m[H(p_m)] and the mutual
# information H(mean_m p_m) - E_m[H(p_m)] (BALD) of every tile voxel. Nothing per member is kept.

PROB_EPS = 1e-7  # sigmoid mode: probabilities are clamped to [eps, 1 - eps] inside the binary entropy


def _binary_entropy(p: torch.Tensor) -> torch.Tensor:
    q = p.clamp(PROB_EPS, 1 - PROB_EPS)
    return -(q * q.log() + (1 - q) * (1 - q).log())


def member_probabilities(logits: torch.Tensor, mode: str = "softmax") -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities and entropy of one member's (B, K, *S) logits, float32.

    Returns:
        ``(p (B, K, *S), H (B, *S))``: softmax mode, ``p`` = softmax over the K classes and
        ``H = -Σ_k p_k log p_k``; sigmoid mode, ``p`` = per-channel sigmoid and ``H`` the mean over
        the K channels of the binary entropies (``p`` clamped to [1e-7, 1 - 1e-7] inside them).
        Entropies in nats.
    """
    v = logits.float()
    if mode == "softmax":
        logp = torch.log_softmax(v, dim=1)
        p = logp.exp()
        return p, -(p * logp).sum(1)
    p = torch.sigmoid(v)
    return p, _binary_entropy(p).mean(1)


def add_member_torch(total: torch.Tensor, sum_p: torch.Tensor, logits: torch.Tensor, mode: str = "softmax") -> None:
    """Add one ensemble member of a batch of tiles to the running sums, in place.

    Args:
        total: float32 (B, K + 2, *S): channels ``:K`` receive the logits (their sum over the
            members), channel ``K`` the member's entropy H(p_m) (nats); channel ``K + 1`` is not touched.
        sum_p: float32 (B, K, *S), receives the member's probabilities p_m.
        logits: (B, K, *S) the member's logits (any float dtype), flipped back to the tile's orientation.
        mode: "softmax" or "sigmoid" (see :func:`member_probabilities`).
    """
    k = logits.shape[1]
    total[:, :k] += logits.float()
    p, h = member_probabilities(logits, mode)
    sum_p += p
    total[:, k] += h


def member_entropy_terms(sum_p: torch.Tensor, sum_h: torch.Tensor, members: int,
                         mode: str = "softmax") -> tuple[torch.Tensor, torch.Tensor]:
    """Expected entropy and mutual information of M ensemble members, per voxel of a batch of tiles.

    Args:
        sum_p: float32 (B, K, *S), Σ_m p_m over the M members (softmax or per-channel sigmoid probabilities).
        sum_h: float32 (B, *S), Σ_m H(p_m) (nats; sigmoid mode: mean over channels of binary entropies).
        members: M.
        mode: "softmax" (H over the K classes) or "sigmoid" (mean over the K channels of binary entropies).

    Returns:
        ``(EH, MI)``, float32 (B, *S), nats: ``EH = Σ_m H(p_m) / M`` (aleatoric part) and
        ``MI = max(H(Σ_m p_m / M) - EH, 0)`` (epistemic part, BALD; exactly 0 for identical members
        up to float rounding, which the clamp keeps non-negative). ``EH + MI`` is the entropy of the
        mean probability wherever MI was not clamped.
    """
    mean_p = sum_p / members
    if mode == "softmax":
        h_mean = -torch.special.xlogy(mean_p, mean_p).sum(1)
    else:
        h_mean = _binary_entropy(mean_p).mean(1)
    eh = sum_h / members
    return eh, (h_mean - eh).clamp_min_(0.0)


def _member_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def add_member_kernel(logit_ptr, total_ptr, sump_ptr, T, K: tl.constexpr, SOFTMAX: tl.constexpr,
                          EPS: tl.constexpr, BLOCK_SIZE: tl.constexpr):
        pid = tl.program_id(0)
        b = tl.program_id(1).to(tl.int64)
        offs = (pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)).to(tl.int64)
        mask = offs < T
        lp = logit_ptr + b * K * T + offs
        tp = total_ptr + b * (K + 2) * T + offs
        pp = sump_ptr + b * K * T + offs
        if SOFTMAX:
            m = tl.full((BLOCK_SIZE,), float("-inf"), tl.float32)
            for k in tl.static_range(K):
                v = tl.load(lp + k * T, mask=mask, other=0.0).to(tl.float32)
                tl.store(tp + k * T, tl.load(tp + k * T, mask=mask, other=0.0) + v, mask=mask)
                m = tl.maximum(m, v)
            s = tl.zeros((BLOCK_SIZE,), tl.float32)
            t = tl.zeros((BLOCK_SIZE,), tl.float32)
            for k in tl.static_range(K):
                d = tl.load(lp + k * T, mask=mask, other=0.0).to(tl.float32) - m
                e = tl.exp(d)
                s += e
                t += e * d
            inv = 1.0 / s
            for k in tl.static_range(K):
                d = tl.load(lp + k * T, mask=mask, other=0.0).to(tl.float32) - m
                p = tl.exp(d) * inv
                tl.store(pp + k * T, tl.load(pp + k * T, mask=mask, other=0.0) + p, mask=mask)
            h = tl.log(s) - t * inv
        else:
            h = tl.zeros((BLOCK_SIZE,), tl.float32)
            for k in tl.static_range(K):
                v = tl.load(lp + k * T, mask=mask, other=0.0).to(tl.float32)
                tl.store(tp + k * T, tl.load(tp + k * T, mask=mask, other=0.0) + v, mask=mask)
                p = 1.0 / (1.0 + tl.exp(-v))
                tl.store(pp + k * T, tl.load(pp + k * T, mask=mask, other=0.0) + p, mask=mask)
                q = tl.minimum(tl.maximum(p, EPS), 1.0 - EPS)
                h += -(q * tl.log(q) + (1.0 - q) * tl.log(1.0 - q))
            h = h / K
        tl.store(tp + K * T, tl.load(tp + K * T, mask=mask, other=0.0) + h, mask=mask)

    return add_member_kernel


_MEMBER_KERNEL = None


def add_member_triton(total: torch.Tensor, sum_p: torch.Tensor, logits: torch.Tensor, mode: str = "softmax") -> None:
    """Triton version of :func:`add_member_torch`: one pass over the member's logits (logits sum,
    probabilities and entropy fused); equal to it within float32 rounding. ``total`` and ``sum_p``
    must be contiguous."""
    global _MEMBER_KERNEL
    if _MEMBER_KERNEL is None:
        _MEMBER_KERNEL = _member_kernel()
    logits = logits.contiguous()
    b, k = logits.shape[:2]
    t = logits[0, 0].numel()
    grid = ((t + BLOCK - 1) // BLOCK, b)
    _MEMBER_KERNEL[grid](logits, total, sum_p, t, K=k, SOFTMAX=mode == "softmax", EPS=PROB_EPS, BLOCK_SIZE=BLOCK)
