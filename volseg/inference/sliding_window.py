"""Sliding-window inference over a preprocessed (C, Z, Y, X) image.

One engine for every task: :func:`run_sliding_window` places tiles at evenly spaced
positions (the step is at most ``step_fraction`` × patch), batches them ``tile_batch`` at a
time through every network (fold ensemble) and every mirroring of the TTA axes, and hands
each member's output to a :class:`~volseg.tasks.base.TileAggregator`, which decides what to
keep: dense maps (:class:`~volseg.inference.dense.DenseAggregator`) or boxes.

:func:`predict_sliding_window` is the dense case: logits (not probabilities) averaged over
folds and mirrors, Gaussian-weighted, normalized and finalized. Its slab mode, chosen when
the full K × Z × Y × X fp32 accumulator would exceed ``memory_budget_bytes`` (or forced),
or on the CPU for an image at least two patches long, holds one patch extent of slices along
the slab axis (z or y) at a time.
"""

from __future__ import annotations

import itertools
import time
from typing import Sequence

import torch
import torch.nn.functional as F

from volseg.inference.dense import DEFAULT_MEMORY_BUDGET, SlidingWindowResult, dense_aggregator
from volseg.kernels.gaussian import tile_starts
from volseg.tasks.base import TileAggregator, TileGrid

__all__ = ["DEFAULT_MEMORY_BUDGET", "SlidingWindowResult", "predict_sliding_window", "run_sliding_window"]

def pad_to_patch(image: torch.Tensor, patch: Sequence[int]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Zero-pad a (C, Z, Y, X) image, centred, to at least ``patch``; returns it and the (before, after) pads."""
    pads = []
    for size, p in zip(image.shape[1:], patch):
        total = max(0, p - size)
        pads.append((total // 2, total - total // 2))
    if not any(a or b for a, b in pads):
        return image, pads
    flat = [v for a, b in reversed(pads) for v in (a, b)]
    return F.pad(image, flat, value=0.0), pads


def _check_image(image: torch.Tensor) -> None:
    if image.ndim != 4:
        raise ValueError(f"expected a (C, Z, Y, X) image, got shape {tuple(image.shape)}")


def _mirror_sets(axes: Sequence[int]) -> list[tuple[int, ...]]:
    axes = sorted(set(int(a) for a in axes))
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


def run_sliding_window(networks: torch.nn.Module | Sequence[torch.nn.Module], image: torch.Tensor,
                       patch_size: Sequence[int], aggregator: TileAggregator, step_fraction: float = 0.5,
                       mirror_axes: Sequence[int] = (), tile_batch: int = 2,
                       device: torch.device | str | None = None, probe=None) -> tuple[object, float]:
    """Run ``networks`` over overlapping tiles of ``image`` and let ``aggregator`` keep the results.

    Args:
        networks: One network or several (a fold ensemble), in eval mode, taking
            (B, C, pz, py, px) tiles.
        image: float32 (C, Z, Y, X) preprocessed image (any device); images smaller than the
            patch are zero-padded (the aggregator is told the padding).
        patch_size: Tile size (z, y, x).
        aggregator: Receives every member's output (see :class:`~volseg.tasks.base.TileAggregator`).
        step_fraction: Largest step between tiles as a fraction of the patch.
        mirror_axes: Spatial axes (0 = z) for mirroring TTA; every combination is run.
        tile_batch: Tiles per forward pass.
        device: Where the networks run (default: the image's device).
        probe: A :class:`~volseg.shift.features.FeatureProbe` on ``networks``, told to record
            the unmirrored pass of every tile only.

    Returns:
        ``(aggregator.finish(), seconds spent in the forward passes and their input flips)``
        (on CUDA with the aggregator's ``add`` included; see :func:`_run_members`).
    """
    nets = list(networks) if isinstance(networks, (list, tuple)) else [networks]
    device = torch.device(device) if device is not None else image.device
    _check_image(image)
    padded, pads = pad_to_patch(image.float(), patch_size)
    padded = padded.to(device)
    shape = tuple(padded.shape[1:])
    starts = [tile_starts(s, p, step_fraction) for s, p in zip(shape, patch_size)]
    mirrors = _mirror_sets(mirror_axes)
    aggregator.setup(TileGrid(shape, pads, tuple(int(p) for p in patch_size), starts, device,
                              len(nets) * len(mirrors)))
    zs, ys, xs = starts
    grid = [(z, y, x) for z in zs for y in ys for x in xs]
    if aggregator.row_wise:  # one row per start along the slab axis, in increasing order
        axis = aggregator.row_axis
        rows = [(s, [t for t in grid if t[axis] == s]) for s in starts[axis]]
    else:
        rows = [(0, grid)]
    pz, py, px = patch_size
    seconds = 0.0
    sync = device.type == "cuda"
    with torch.inference_mode():
        for row, positions in rows:
            aggregator.start_row(row)
            for i in range(0, len(positions), tile_batch):
                chunk = positions[i:i + tile_batch]
                batch = torch.stack([padded[:, z:z + pz, y:y + py, x:x + px] for z, y, x in chunk])
                seconds += _run_members(nets, mirrors, batch, chunk, aggregator, sync, probe)
                aggregator.commit(chunk)
    return aggregator.finish(), seconds


def _run_members(nets, mirrors, batch, offsets, aggregator, sync: bool, probe) -> float:
    """Every network × mirroring of one batch of tiles, handed to ``aggregator``.

    Returns:
        Seconds of the forward passes and their input flips. On CUDA (``sync``) the
        aggregator's work on the outputs is included, since telling it apart would take a
        synchronization per pass.
    """
    device = batch.device
    if sync:
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    aside = 0.0  # seconds in the aggregator (CPU only)
    for net in nets:
        for axes in mirrors:
            dims = [a + 2 for a in axes]
            x = torch.flip(batch, dims) if dims else batch
            if probe is not None:
                probe.recording = not dims
            out = net(x)
            t_add = time.perf_counter()
            aggregator.add(out, offsets, dims)
            if not sync:
                aside += time.perf_counter() - t_add
    if sync:
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0 - aside


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
            and entropy maps; uncertainty also returns the ensemble members' (networks ×
            mirrorings) ``expected_entropy`` E_m[H(p_m)] and ``mutual_information``
            H(E_m p_m) - E_m[H(p_m)] (fp16, nats; see :mod:`volseg.inference.dense`).
        return_logits: Return the averaged logits instead of finalizing (no labels); with
            uncertainty, (K + 2) channels: the logits, then the two member terms.
        slab: Force slab mode (True) or full mode (False); ``None`` decides
            (:func:`~volseg.inference.dense.dense_aggregator`).
        memory_budget_bytes: Budget of the full accumulator (default 4 GiB).

    Returns:
        A :class:`SlidingWindowResult` on the CPU.

    Example:
        >>> net = torch.nn.Conv3d(1, 3, kernel_size=1)
        >>> res = predict_sliding_window(net, torch.zeros(1, 40, 40, 40), (32, 32, 32), 3, mirror_axes=(0, 2))
        >>> res.labels.shape
        torch.Size([40, 40, 40])
    """
    t_start = time.perf_counter()
    device = torch.device(device) if device is not None else image.device
    _check_image(image)
    agg = dense_aggregator(num_classes, image.shape[1:], patch_size, sigma_scale, backend, device, mode,
                           return_probabilities, return_uncertainty, return_logits, slab, memory_budget_bytes)
    result, network_seconds = run_sliding_window(networks, image, patch_size, agg, step_fraction, mirror_axes,
                                                 tile_batch, device)
    result.timings = {"network": network_seconds, "total": time.perf_counter() - t_start, "slab_mode": agg.row_wise}
    return result
