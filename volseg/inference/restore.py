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
                          backend: str = "auto", member_terms: bool = False):
    """Resample (K, z, y, x) averaged logits to ``shape`` and finalize them, one z-slab at a time.

    Same result as ``finalize(resample_logits(logits, shape), ...)``, but the resampled
    float logits exist only one slab at a time: besides the outputs (uint8 labels, fp16
    maps), memory grows with the slab, not with K × the output volume.

    Args:
        logits: (K, z, y, x) averaged logits, or (K + 2, z, y, x) with ``member_terms``
            (:attr:`volseg.inference.dense.SlidingWindowResult.logits` with uncertainty).
        shape: Output spatial shape (z, y, x).
        mode, return_probabilities, return_uncertainty, backend: As for
            :func:`volseg.kernels.finalize.finalize`.
        member_terms: The last 2 channels are the members' expected entropy and mutual
            information (nats): resampled trilinearly like the logits and returned as
            ``expected_entropy`` and ``mutual_information`` (fp16, ``shape``).

    Returns:
        A :class:`volseg.kernels.finalize.Finalized` of spatial shape ``shape``.
    """
    from volseg.kernels.finalize import allocate_outputs, finalize

    shape = tuple(int(s) for s in shape)
    k = logits.shape[0] - (2 if member_terms else 0)
    if k < 1:
        raise ValueError(f"expected logits of K{' + 2' if member_terms else ''} channels with K >= 1, "
                         f"found shape {tuple(logits.shape)}")
    out = allocate_outputs(k, shape, logits.device, mode, return_probabilities, return_uncertainty, member_terms)
    for z0, z1 in _slab_bounds(shape[0], logits.shape[0] * shape[1] * shape[2]):
        part = finalize(_resample_slab(logits, shape, z0, z1), mode=mode, return_probabilities=return_probabilities,
                        return_uncertainty=return_uncertainty, backend=backend, member_terms=member_terms)
        for name in ("labels", "max_prob", "entropy", "expected_entropy", "mutual_information"):
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


def label_values(outputs: dict) -> np.ndarray:
    """Output channel → label value (softmax), or the label painted by each region (sigmoid).

    Args:
        outputs: The plan's ``outputs`` section.
    """
    if outputs["mode"] == "softmax":
        return np.asarray(list(range(outputs["num_outputs"])), dtype=np.uint8)
    return np.asarray([max(v) for v in outputs["regions"].values()], dtype=np.uint8)


def regions_to_labels(probs: torch.Tensor, regions: dict, class_order: list[int] | None = None) -> torch.Tensor:
    """Sigmoid mode: paint (R, Z, Y, X) region probabilities > 0.5 into a uint8 (Z, Y, X) label map.

    Regions are painted from the largest union to the smallest, so a nested region overwrites
    the one around it; region ``r`` paints ``class_order[r]`` (the plan's
    ``outputs.regions_class_order``; default :func:`volseg.io.dataset.region_paint_values`, for plans older than that key).
    """
    groups = list(regions.values())
    from volseg.io.dataset import region_paint_values

    paint = list(class_order) if class_order is not None else region_paint_values(regions)
    if len(paint) != len(groups):
        raise ValueError(f"regions_class_order has {len(paint)} values for {len(groups)} regions")
    order = sorted(range(len(groups)), key=lambda r: -len(groups[r]))
    labels = torch.zeros(probs.shape[1:], dtype=torch.uint8, device=probs.device)
    for r in order:
        labels[probs[r] > 0.5] = int(paint[r])
    return labels


def map_to_input_grid(array: torch.Tensor | np.ndarray, props: dict,
                      full_shape: tuple[int, int, int] | list[int], outside: float = 0.0) -> np.ndarray:
    """Un-crop a map of the cropped region onto the input grid, as fp16, 0 outside the crop.

    For the uncertainty maps (``expected_entropy``, ``mutual_information``, nats) after
    :func:`resample_and_finalize` or on the crop's grid.

    Args:
        array: (Z', Y', X') map of the cropped region (any leading dims are kept), torch or NumPy.
        props: Preprocessing properties; ``props["crop_bbox"]`` is the region's
            [[z0, z1], [y0, y1], [x0, x1]] on the input grid.
        full_shape: Spatial shape (z, y, x) of the input grid.
        outside: The value outside the crop: 0 for the uncertainty maps, 1 for ``max_prob``
            (certain background there).

    Returns:
        fp16 NumPy array (..., *full_shape).

    Raises:
        ValueError: The map's shape is not the crop box's.
    """
    m = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    box = props["crop_bbox"]
    want = tuple(int(b) - int(a0) for a0, b in box)
    if m.ndim < 3 or tuple(m.shape[-3:]) != want:
        raise ValueError(f"expected a map of spatial shape {want} (the crop box {box}), found shape {m.shape}")
    return uncrop(m.astype(np.float16), box, tuple(int(s) for s in full_shape), outside)


def dense_to_input_grid(labels: torch.Tensor, probs: torch.Tensor | None, entropy: torch.Tensor | None,
                        props: dict, full_shape: tuple[int, int, int], outputs: dict):
    """Un-crop (Z', Y', X') labels and optional (K, Z', Y', X') fp16 probabilities and entropy of
    the cropped region (``props["crop_bbox"]``) onto the input grid of spatial shape ``full_shape``.

    Returns:
        ``(labels uint8, probabilities fp16 | None, entropy fp16 | None)`` as NumPy arrays; outside
        the crop, labels and entropy are 0 and softmax probabilities are background for certain.
    """
    box = props["crop_bbox"]
    lab = labels.cpu().numpy().astype(np.uint8)
    if outputs["mode"] == "softmax":
        lab = label_values(outputs)[lab]
    lab = uncrop(lab, box, full_shape, 0)
    filled = None
    if probs is not None:
        p = probs.cpu().numpy().astype(np.float16)
        filled = np.zeros((p.shape[0], *full_shape), np.float16)
        if outputs["mode"] == "softmax":
            filled[0] = 1.0  # outside the cropped region: background for certain
        sl = tuple(slice(a, b) for a, b in box)
        filled[(slice(None), *sl)] = p
    ent = None if entropy is None else uncrop(entropy.cpu().numpy().astype(np.float16), box, full_shape, 0)
    return lab, filled, ent
