"""One pass from the accumulator to outputs: normalize, softmax, argmax, max probability, entropy.

Input: the fp32 (K, Z, Y, X) accumulator (or a slab of it, z or y) and the three 1D normalizers
(see :mod:`volseg.kernels.gaussian`). Outputs: uint8 labels (Z, Y, X); optionally fp16
probabilities (K, Z, Y, X), fp16 maximum probability and fp16 entropy (nats) (Z, Y, X).
:func:`finalize_torch` works in z-chunks so that its float temporaries stay small, and makes
none when only labels are asked for (the argmax of the accumulator is the argmax of the
normalized logits);
:func:`finalize_triton` keeps everything in registers and writes each output once.
Sigmoid mode (one independent channel per region) gives per-channel probabilities and the
mean binary entropy; its labels are painted by the caller from the regions.

Member terms (``member_terms=True``): the accumulator has K + 2 channels, the K classes
followed by the Gaussian-weighted sums of the ensemble members' expected entropy and mutual
information (see :func:`volseg.kernels.accumulate.member_entropy_terms`). Only the first K
channels enter the softmax / sigmoid, labels, probabilities, max probability and entropy
(which are then the same values as without them); the last two are normalized like the
logits and written as fp16 ``expected_entropy`` and ``mutual_information`` (nats, (Z, Y, X)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CHUNK_BYTES = 64 << 20  # largest float temporary of the torch finalize (each of at most four)
LABEL_CHUNK_BYTES = 4 << 20  # labels only: the max values and int64 indices of one chunk of slices
BLOCK = 512


@dataclass
class Finalized:
    """Outputs of a finalize pass; ``None`` for those not asked for.

    Attributes:
        labels: uint8 (Z, Y, X) argmax (softmax mode), else ``None``.
        probabilities: fp16 (K, Z, Y, X).
        max_prob: fp16 (Z, Y, X): softmax, the largest class probability; sigmoid, the least
            confident channel's max(p, 1 - p).
        entropy: fp16 (Z, Y, X), nats, of the averaged prediction (predictive entropy).
        expected_entropy: fp16 (Z, Y, X), nats: the ensemble members' mean entropy E_m[H(p_m)]
            (aleatoric part), with member terms only.
        mutual_information: fp16 (Z, Y, X), nats, >= 0: H(E_m[p_m]) - E_m[H(p_m)] (epistemic part,
            BALD), with member terms only.
    """

    labels: torch.Tensor | None
    probabilities: torch.Tensor | None = None
    max_prob: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    expected_entropy: torch.Tensor | None = None
    mutual_information: torch.Tensor | None = None


def allocate_outputs(k: int, shape, device, mode: str, probs: bool, unc: bool, member_terms: bool = False) -> Finalized:
    """Empty outputs of a finalize pass over K classes of spatial ``shape`` (z, y, x); ``member_terms``
    adds the expected entropy and mutual information maps."""
    z, y, x = shape

    def vol(want: bool):
        return torch.empty((z, y, x), dtype=torch.float16, device=device) if want else None

    return Finalized(
        labels=torch.empty((z, y, x), dtype=torch.uint8, device=device) if mode == "softmax" else None,
        probabilities=torch.empty((k, z, y, x), dtype=torch.float16, device=device) if probs else None,
        max_prob=vol(unc), entropy=vol(unc), expected_entropy=vol(member_terms), mutual_information=vol(member_terms))


def _classes(acc: torch.Tensor, member_terms: bool) -> int:
    """K, the number of classes of a (K [+ 2], ...) accumulator."""
    k = acc.shape[0] - (2 if member_terms else 0)
    if k < 1:
        raise ValueError(f"expected an accumulator of K {'+ 2 ' if member_terms else ''}channels with K >= 1, "
                         f"found {acc.shape[0]} channels")
    return k


def finalize_torch(acc: torch.Tensor, nz: torch.Tensor, ny: torch.Tensor, nx: torch.Tensor, mode: str = "softmax",
                   return_probabilities: bool = False, return_uncertainty: bool = False,
                   member_terms: bool = False) -> Finalized:
    """Reference path; see the module docstring. ``nz`` covers exactly the z-range of ``acc``.

    Args:
        acc: float32 (K, Z, Y, X) accumulator, or (K + 2, Z, Y, X) with ``member_terms``.
        nz, ny, nx: float32 normalizers of lengths Z, Y, X.
        mode: "softmax" or "sigmoid".
        return_probabilities, return_uncertainty: Also write probabilities / max probability and entropy.
        member_terms: The last 2 channels are the members' expected entropy and mutual information:
            write them (normalized) as ``expected_entropy`` and ``mutual_information``.
    """
    k = _classes(acc, member_terms)
    _, zs, ys, xs = acc.shape
    out = allocate_outputs(k, (zs, ys, xs), acc.device, mode, return_probabilities, return_uncertainty, member_terms)
    labels_only = not (return_probabilities or return_uncertainty)
    inv_yx = (1.0 / (ny[:, None] * nx[None, :]))
    if labels_only and not member_terms:  # max values + int64 indices of a few slices only
        per_slice, budget = 12 * max(ys * xs, 1), LABEL_CHUNK_BYTES
    else:
        per_slice, budget = 4 * k * max(ys * xs, 1), CHUNK_BYTES
    step = max(1, budget // per_slice)
    for z0 in range(0, zs, step):
        z1 = min(zs, z0 + step)
        a = acc[:, z0:z1]
        if labels_only and mode == "softmax":  # a positive factor per voxel leaves the argmax alone
            out.labels[z0:z1] = a[:k].max(0).indices.to(torch.uint8)  # 4× faster than argmax here
        if member_terms or not labels_only:
            scale = inv_yx[None] / nz[z0:z1, None, None]  # (z, Y, X): the normalizer, positive everywhere
        if member_terms:
            out.expected_entropy[z0:z1] = (a[k] * scale).half()
            out.mutual_information[z0:z1] = (a[k + 1] * scale).half()
        if labels_only:
            continue
        v = a[:k] * scale[None]
        if mode == "softmax":
            logp = torch.log_softmax(v, dim=0)
            p = logp.exp()
            out.labels[z0:z1] = v.max(0).indices.to(torch.uint8)
            if return_uncertainty:
                out.max_prob[z0:z1] = p.max(0).values.half()
                out.entropy[z0:z1] = (-(p * logp).sum(0)).half()
        else:
            p = torch.sigmoid(v)
            if return_uncertainty:
                q = p.clamp(1e-7, 1 - 1e-7)
                out.max_prob[z0:z1] = torch.maximum(p, 1 - p).min(0).values.half()
                out.entropy[z0:z1] = (-(q * q.log() + (1 - q) * (1 - q).log())).mean(0).half()
        if return_probabilities:
            out.probabilities[:, z0:z1] = p.half()
    return out


def normalize_torch(acc: torch.Tensor, nz: torch.Tensor, ny: torch.Tensor, nx: torch.Tensor) -> torch.Tensor:
    """Divide the accumulator by the separable normalizer, in place (gives averaged logits)."""
    inv_yx = 1.0 / (ny[:, None] * nx[None, :])
    step = max(1, CHUNK_BYTES // (4 * max(acc.shape[2] * acc.shape[3], 1)))
    for z0 in range(0, acc.shape[1], step):
        z1 = min(acc.shape[1], z0 + step)
        acc[:, z0:z1] *= inv_yx[None, None] / nz[z0:z1, None, None][None]
    return acc


def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def finalize_kernel(acc_ptr, nz_ptr, ny_ptr, nx_ptr, labels_ptr, probs_ptr, maxp_ptr, ent_ptr, eh_ptr, mi_ptr,
                        N, Y, X, K: tl.constexpr, SOFTMAX: tl.constexpr, WRITE_PROBS: tl.constexpr,
                        WRITE_UNC: tl.constexpr, MEMBER_TERMS: tl.constexpr, BLOCK_SIZE: tl.constexpr):
        pid = tl.program_id(0)
        offs = (pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)).to(tl.int64)
        mask = offs < N
        n64 = N.to(tl.int64)  # channel offsets k * N pass 2**31 for accumulators of 8 GiB and more
        z = offs // (Y * X)
        y = (offs // X) % Y
        x = offs % X
        norm = tl.load(nz_ptr + z, mask=mask, other=1.0) * tl.load(ny_ptr + y, mask=mask, other=1.0) \
            * tl.load(nx_ptr + x, mask=mask, other=1.0)
        inv = 1.0 / norm
        if MEMBER_TERMS:  # channels K, K + 1 after the K classes
            eh = tl.load(acc_ptr + K * n64 + offs, mask=mask, other=0.0) * inv
            mi = tl.load(acc_ptr + (K + 1) * n64 + offs, mask=mask, other=0.0) * inv
            tl.store(eh_ptr + offs, eh.to(tl.float16), mask=mask)
            tl.store(mi_ptr + offs, mi.to(tl.float16), mask=mask)
        if SOFTMAX:
            m = tl.full((BLOCK_SIZE,), float("-inf"), tl.float32)
            arg = tl.zeros((BLOCK_SIZE,), tl.int32)
            for k in tl.static_range(K):
                v = tl.load(acc_ptr + k * n64 + offs, mask=mask, other=0.0) * inv
                better = v > m
                arg = tl.where(better, k, arg)
                m = tl.where(better, v, m)
            s = tl.zeros((BLOCK_SIZE,), tl.float32)
            t = tl.zeros((BLOCK_SIZE,), tl.float32)
            for k in tl.static_range(K):
                d = tl.load(acc_ptr + k * n64 + offs, mask=mask, other=0.0) * inv - m
                e = tl.exp(d)
                s += e
                t += e * d
            tl.store(labels_ptr + offs, arg.to(tl.uint8), mask=mask)
            if WRITE_PROBS:
                for k in tl.static_range(K):
                    d = tl.load(acc_ptr + k * n64 + offs, mask=mask, other=0.0) * inv - m
                    tl.store(probs_ptr + k * n64 + offs, (tl.exp(d) / s).to(tl.float16), mask=mask)
            if WRITE_UNC:
                tl.store(maxp_ptr + offs, (1.0 / s).to(tl.float16), mask=mask)
                tl.store(ent_ptr + offs, (tl.log(s) - t / s).to(tl.float16), mask=mask)
        else:
            worst = tl.full((BLOCK_SIZE,), 1.0, tl.float32)
            h = tl.zeros((BLOCK_SIZE,), tl.float32)
            for k in tl.static_range(K):
                v = tl.load(acc_ptr + k * n64 + offs, mask=mask, other=0.0) * inv
                p = 1.0 / (1.0 + tl.exp(-v))
                if WRITE_PROBS:
                    tl.store(probs_ptr + k * n64 + offs, p.to(tl.float16), mask=mask)
                q = tl.minimum(tl.maximum(p, 1e-7), 1.0 - 1e-7)
                worst = tl.minimum(worst, tl.maximum(p, 1.0 - p))
                h += -(q * tl.log(q) + (1.0 - q) * tl.log(1.0 - q))
            if WRITE_UNC:
                tl.store(maxp_ptr + offs, worst.to(tl.float16), mask=mask)
                tl.store(ent_ptr + offs, (h / K).to(tl.float16), mask=mask)

    return finalize_kernel


_KERNEL = None


def finalize_triton(acc: torch.Tensor, nz: torch.Tensor, ny: torch.Tensor, nx: torch.Tensor, mode: str = "softmax",
                    return_probabilities: bool = False, return_uncertainty: bool = False,
                    member_terms: bool = False) -> Finalized:
    """Triton version of :func:`finalize_torch` (same outputs; labels identical, maps within fp16 rounding)."""
    global _KERNEL
    if _KERNEL is None:
        _KERNEL = _kernel()
    acc = acc.contiguous()
    k = _classes(acc, member_terms)
    _, zs, ys, xs = acc.shape
    out = allocate_outputs(k, (zs, ys, xs), acc.device, mode, return_probabilities, return_uncertainty, member_terms)
    dummy = torch.empty(1, dtype=torch.float16, device=acc.device)
    n = zs * ys * xs
    grid = ((n + BLOCK - 1) // BLOCK,)
    _KERNEL[grid](acc, nz.contiguous(), ny.contiguous(), nx.contiguous(),
                  out.labels if out.labels is not None else torch.empty(1, dtype=torch.uint8, device=acc.device),
                  out.probabilities if out.probabilities is not None else dummy,
                  out.max_prob if out.max_prob is not None else dummy,
                  out.entropy if out.entropy is not None else dummy,
                  out.expected_entropy if member_terms else dummy,
                  out.mutual_information if member_terms else dummy,
                  n, ys, xs, K=k, SOFTMAX=mode == "softmax", WRITE_PROBS=return_probabilities,
                  WRITE_UNC=return_uncertainty, MEMBER_TERMS=member_terms, BLOCK_SIZE=BLOCK)
    return out


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def finalize(acc: torch.Tensor, nz: torch.Tensor | None = None, ny: torch.Tensor | None = None,
             nx: torch.Tensor | None = None, mode: str = "softmax", return_probabilities: bool = False,
             return_uncertainty: bool = False, backend: str = "auto", member_terms: bool = False) -> Finalized:
    """Finalize an accumulator, or already-normalized logits when the normalizers are ``None``.

    ``backend``: "triton", "torch", or "auto" (Triton for CUDA tensors when it is installed).
    ``member_terms``: the last 2 of ``acc``'s channels are the members' expected entropy and mutual
    information (see the module docstring).
    """
    if nz is None:
        one = torch.ones(1, dtype=torch.float32, device=acc.device)
        nz, ny, nx = one.expand(acc.shape[1]), one.expand(acc.shape[2]), one.expand(acc.shape[3])
    use_triton = backend == "triton" or (backend == "auto" and acc.is_cuda and triton_available())
    fn = finalize_triton if use_triton else finalize_torch
    return fn(acc, nz, ny, nx, mode, return_probabilities, return_uncertainty, member_terms)
