"""Sliding-window inference over a preprocessed (C, Z, Y, X) image.

Tiles start at evenly spaced positions (the step is at most ``step_fraction`` × patch),
batched ``tile_batch`` at a time through every network (fold ensemble) and every
mirroring of the TTA axes; their logits are averaged, weighted by a separable Gaussian and
accumulated (:mod:`volseg.kernels.accumulate`), then normalized and finalized in one pass
(:mod:`volseg.kernels.finalize`). Logits, not probabilities, are averaged over folds and
mirrors.

Memory: in full mode the accumulator is K × Z × Y × X fp32. In slab mode, chosen when
that would exceed ``memory_budget_bytes`` (or forced), tiles run in z order and the
accumulator holds one patch depth of slices: whenever the next tile row starts further in
z, the slices before it can receive nothing more and are finalized and released.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F

from volseg.kernels.accumulate import accumulate_torch, accumulate_triton
from volseg.kernels.finalize import Finalized, finalize, normalize_torch, triton_available
from volseg.kernels.gaussian import gaussian_1d, normalizer_1d, patch_weight, tile_starts

DEFAULT_MEMORY_BUDGET = 4 * 1024 ** 3


@dataclass
class SlidingWindowResult:
    """Outputs on the (unpadded) input grid, on the CPU.

    Attributes:
        labels: uint8 (Z, Y, X) argmax (softmax mode), else ``None``.
        probabilities: fp16 (K, Z, Y, X) or ``None``.
        max_prob: fp16 (Z, Y, X) or ``None``.
        entropy: fp16 (Z, Y, X) in nats, or ``None``.
        logits: averaged logits (K, Z, Y, X) (fp32 in full mode, fp16 in slab mode) when asked for.
        timings: seconds: ``network`` (forward passes only) and ``total``.
    """

    labels: torch.Tensor | None
    probabilities: torch.Tensor | None = None
    max_prob: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    timings: dict = field(default_factory=dict)


def _pad_to_patch(image: torch.Tensor, patch: Sequence[int]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    pads = []
    for size, p in zip(image.shape[1:], patch):
        total = max(0, p - size)
        pads.append((total // 2, total - total // 2))
    if not any(a or b for a, b in pads):
        return image, pads
    flat = [v for a, b in reversed(pads) for v in (a, b)]
    return F.pad(image, flat, value=0.0), pads


def _mirror_sets(axes: Sequence[int]) -> list[tuple[int, ...]]:
    axes = sorted(set(int(a) for a in axes))
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


class _Runner:
    """Fold × mirror averaged logits of a batch of tiles, timing the forward passes."""

    def __init__(self, networks, mirror_axes, device):
        self.networks, self.mirrors, self.device = networks, _mirror_sets(mirror_axes), device
        self.seconds = 0.0

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        sync = self.device.type == "cuda"
        if sync:
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        total = None
        for net in self.networks:
            for axes in self.mirrors:
                dims = [a + 2 for a in axes]
                x = torch.flip(batch, dims) if dims else batch
                out = net(x)
                out = out[0] if isinstance(out, (list, tuple)) else out
                out = torch.flip(out, dims) if dims else out
                total = out.float() if total is None else total.add_(out.float())
        total /= len(self.networks) * len(self.mirrors)
        if sync:
            torch.cuda.synchronize(self.device)
        self.seconds += time.perf_counter() - t0
        return total


def predict_sliding_window(networks: torch.nn.Module | Sequence[torch.nn.Module], image: torch.Tensor,
                           patch_size: Sequence[int], num_classes: int, step_fraction: float = 0.5,
                           sigma_scale: float = 0.125, mirror_axes: Sequence[int] = (), tile_batch: int = 2,
                           device: torch.device | str | None = None, backend: str = "auto", mode: str = "softmax",
                           return_probabilities: bool = False, return_uncertainty: bool = False,
                           return_logits: bool = False, slab: bool | None = None,
                           memory_budget_bytes: int | None = None) -> SlidingWindowResult:
    """Predict a whole image with overlapping tiles.

    Args:
        networks: One network or several (a fold ensemble), in eval mode, mapping
            (B, C, pz, py, px) to logits (B, K, pz, py, px) (a list's first entry is used).
        image: float32 (C, Z, Y, X) preprocessed image (any device).
        patch_size: Tile size (z, y, x); images smaller than it are zero-padded and cropped back.
        num_classes: K, the number of output channels.
        step_fraction: Largest step between tiles as a fraction of the patch.
        sigma_scale: Gaussian σ as a fraction of the patch.
        mirror_axes: Spatial axes (0 = z) for mirroring TTA; every combination is run.
        tile_batch: Tiles per forward pass.
        device: Where the networks and the accumulator live (default: the image's device).
        backend: "torch", "triton" or "auto" (Triton on CUDA when installed).
        mode: "softmax" or "sigmoid".
        return_probabilities, return_uncertainty: Also return fp16 probability / max-probability
            and entropy maps.
        return_logits: Return the averaged logits instead of finalizing (no labels).
        slab: Force slab mode (True) or full mode (False); ``None`` decides by the budget.
        memory_budget_bytes: Budget of the full accumulator (default 4 GiB).

    Returns:
        A :class:`SlidingWindowResult` on the CPU.

    Example:
        >>> res = predict_sliding_window(net, torch.zeros(1, 96, 96, 96), (64, 64, 64), 3, mirror_axes=(0, 1, 2))
        >>> res.labels.shape
        torch.Size([96, 96, 96])
    """
    t_start = time.perf_counter()
    nets = list(networks) if isinstance(networks, (list, tuple)) else [networks]
    device = torch.device(device) if device is not None else image.device
    if image.ndim != 4:
        raise ValueError(f"expected a (C, Z, Y, X) image, got shape {tuple(image.shape)}")
    padded, pads = _pad_to_patch(image.float(), patch_size)
    padded = padded.to(device)
    shape = padded.shape[1:]
    starts = [tile_starts(s, p, step_fraction) for s, p in zip(shape, patch_size)]
    w = [gaussian_1d(p, sigma_scale, device) for p in patch_size]
    norms = [normalizer_1d(s, st, wi) for s, st, wi in zip(shape, starts, w)]
    use_triton = backend == "triton" or (backend == "auto" and device.type == "cuda" and triton_available())
    weight = None if use_triton else patch_weight(*w)
    budget = DEFAULT_MEMORY_BUDGET if memory_budget_bytes is None else memory_budget_bytes
    full_bytes = 4 * num_classes * shape[0] * shape[1] * shape[2]
    use_slab = (full_bytes > budget) if slab is None else slab
    runner = _Runner(nets, mirror_axes, device)
    ctx = dict(padded=padded, starts=starts, patch=patch_size, w=w, norms=norms, weight=weight, triton=use_triton,
               runner=runner, tile_batch=tile_batch, k=num_classes, mode=mode, probs=return_probabilities,
               unc=return_uncertainty, logits=return_logits, backend="triton" if use_triton else "torch")
    out = _run_slabs(ctx) if use_slab else _run_full(ctx)
    result = _crop(out, pads)
    result.timings = {"network": runner.seconds, "total": time.perf_counter() - t_start, "slab_mode": use_slab}
    return result


def _accumulate(ctx: dict, acc: torch.Tensor, tiles: torch.Tensor, offsets: list[tuple[int, int, int]]) -> None:
    if ctx["triton"]:
        accumulate_triton(acc, tiles, offsets, *ctx["w"])
    else:
        accumulate_torch(acc, tiles, offsets, ctx["weight"])


def _run_row(ctx: dict, acc: torch.Tensor, positions: list[tuple[int, int, int]], z_origin: int) -> None:
    """Predict the tiles at ``positions`` and add them to ``acc`` whose slice 0 is ``z_origin``."""
    pz, py, px = ctx["patch"]
    img = ctx["padded"]
    for i in range(0, len(positions), ctx["tile_batch"]):
        chunk = positions[i:i + ctx["tile_batch"]]
        batch = torch.stack([img[:, z:z + pz, y:y + py, x:x + px] for z, y, x in chunk])
        logits = ctx["runner"](batch)
        _accumulate(ctx, acc, logits, [(z - z_origin, y, x) for z, y, x in chunk])


def _finish(ctx: dict, acc: torch.Tensor, nz: torch.Tensor) -> Finalized | torch.Tensor:
    if ctx["logits"]:
        return normalize_torch(acc, nz, ctx["norms"][1], ctx["norms"][2])
    return finalize(acc, nz, ctx["norms"][1], ctx["norms"][2], ctx["mode"], ctx["probs"], ctx["unc"], ctx["backend"])


def _run_full(ctx: dict) -> dict:
    shape = ctx["padded"].shape[1:]
    acc = torch.zeros((ctx["k"], *shape), dtype=torch.float32, device=ctx["padded"].device)
    zs, ys, xs = ctx["starts"]
    _run_row(ctx, acc, [(z, y, x) for z in zs for y in ys for x in xs], 0)
    res = _finish(ctx, acc, ctx["norms"][0])
    if ctx["logits"]:
        return {"logits": res.cpu()}
    return {f: (getattr(res, f).cpu() if getattr(res, f) is not None else None)
            for f in ("labels", "probabilities", "max_prob", "entropy")}


def _run_slabs(ctx: dict) -> dict:
    zsz, ysz, xsz = ctx["padded"].shape[1:]
    pz = ctx["patch"][0]
    zs, ys, xs = ctx["starts"]
    dev = ctx["padded"].device
    outs = _alloc_cpu(ctx, (zsz, ysz, xsz))
    acc = torch.zeros((ctx["k"], pz, ysz, xsz), dtype=torch.float32, device=dev)
    lo = 0  # z of acc[:, 0]
    for i, z in enumerate(zs):
        if z > lo:  # slices lo..z-1 are complete: finalize and shift the buffer
            _emit(ctx, outs, acc[:, :z - lo], lo)
            keep = lo + pz - z
            acc[:, :keep] = acc[:, z - lo:z - lo + keep].clone()
            acc[:, keep:] = 0
            lo = z
        _run_row(ctx, acc, [(z, y, x) for y in ys for x in xs], lo)
    _emit(ctx, outs, acc[:, :zsz - lo], lo)
    return outs


def _alloc_cpu(ctx: dict, shape) -> dict:
    k = ctx["k"]
    if ctx["logits"]:
        return {"logits": torch.empty((k, *shape), dtype=torch.float16)}
    return {"labels": torch.empty(shape, dtype=torch.uint8) if ctx["mode"] == "softmax" else None,
            "probabilities": torch.empty((k, *shape), dtype=torch.float16) if ctx["probs"] else None,
            "max_prob": torch.empty(shape, dtype=torch.float16) if ctx["unc"] else None,
            "entropy": torch.empty(shape, dtype=torch.float16) if ctx["unc"] else None}


def _emit(ctx: dict, outs: dict, block: torch.Tensor, z0: int) -> None:
    n = block.shape[1]
    res = _finish(ctx, block.clone(), ctx["norms"][0][z0:z0 + n])
    if ctx["logits"]:
        outs["logits"][:, z0:z0 + n] = res.half().cpu()
        return
    for f, v in outs.items():
        if v is not None:
            v[..., z0:z0 + n, :, :] = getattr(res, f).cpu()


def _crop(out: dict, pads: list[tuple[int, int]]) -> SlidingWindowResult:
    sl = tuple(slice(a, None if b == 0 else -b) for a, b in pads)
    crop = {k: (v[(Ellipsis, *sl)].contiguous() if v is not None else None) for k, v in out.items()}
    return SlidingWindowResult(labels=crop.get("labels"), probabilities=crop.get("probabilities"),
                               max_prob=crop.get("max_prob"), entropy=crop.get("entropy"), logits=crop.get("logits"))
