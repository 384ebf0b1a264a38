"""Intensity measurements of one in-memory image: the fingerprint's, and the shift check's at predict time."""

from __future__ import annotations

import numpy as np

IMAGE_SAMPLES = 100_000  # voxels per channel sampled for the whole-image statistics
FOREGROUND_SAMPLES = 10_000


def intensity_stats(values: np.ndarray) -> dict[str, float]:
    """``mean, std, min, max, p00_5, p50, p99_5, n`` of a 1D array (zeros and std 1 when empty)."""
    if values.size == 0:
        return {"mean": 0.0, "std": 1.0, "min": 0.0, "max": 0.0, "p00_5": 0.0, "p50": 0.0, "p99_5": 0.0, "n": 0}
    v = values.astype(np.float64, copy=False)
    p = np.percentile(v, [0.5, 50, 99.5])
    return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max()),
            "p00_5": float(p[0]), "p50": float(p[1]), "p99_5": float(p[2]), "n": int(v.size)}


def sample_voxels(images: np.ndarray, mask: np.ndarray | None, limit: int, seed: int = 0) -> np.ndarray:
    """float32 (C, N) intensities of at most ``limit`` voxels of (C, Z, Y, X) ``images``,
    drawn uniformly (with a fixed seed) from ``mask`` (Z, Y, X bool; every voxel when None)."""
    flat = images.reshape(images.shape[0], -1)
    index = np.flatnonzero(mask.ravel()) if mask is not None else None
    n = flat.shape[1] if index is None else index.size
    rng = np.random.default_rng(seed)
    if n > limit:
        pick = rng.choice(n, limit, replace=False) if n < 8 * limit else rng.integers(0, n, limit)
        index = pick if index is None else index[pick]
    return (flat if index is None else flat[:, index]).astype(np.float32, copy=False)


def image_intensity(images: np.ndarray, seed: int = 0) -> list[dict[str, float]]:
    """Per channel :func:`intensity_stats` (sampled) of a (C, Z, Y, X) image's non-zero region
    (voxels non-zero in any channel, the region preprocessing crops to; every voxel when none
    is zero)."""
    nonzero = (images != 0).any(axis=0)
    values = sample_voxels(images, None if nonzero.all() else nonzero, IMAGE_SAMPLES, seed)
    return [intensity_stats(values[c]) for c in range(values.shape[0])]


def intensity_centroid(images: np.ndarray) -> list[list[float]]:
    """Per channel, the (z, y, x) intensity-weighted centroid of a (C, Z, Y, X) image as a
    fraction (0–1) of the non-zero region's extent along each axis: an orientation measure
    (a flip along an axis maps c to 1 − c). 0.5 for an all-zero channel."""
    out = []
    nonzero = (images != 0).any(axis=0)
    for channel in images:
        w = np.clip(channel, 0, None).astype(np.float64)
        row = []
        for axis in range(3):
            others = tuple(a for a in range(3) if a != axis)
            profile = w.sum(axis=others)
            occupied = np.flatnonzero(nonzero.any(axis=others))
            if profile.sum() <= 0 or occupied.size == 0:
                row.append(0.5)
                continue
            lo, hi = occupied[0], occupied[-1] + 1
            pos = (np.arange(profile.size) + 0.5 - lo) / (hi - lo)
            row.append(float((profile * pos).sum() / profile.sum()))
        out.append(row)
    return out


def noise_level(images: np.ndarray) -> list[float]:
    """Per channel, a robust estimate of the voxel noise σ of a (C, Z, Y, X) image: 1.4826 ×
    the median absolute difference of x-neighbours that both lie in the non-zero region, / √2
    (intensity units; 0 when no such pair exists)."""
    nonzero = (images != 0).any(axis=0)
    pairs = nonzero[..., 1:] & nonzero[..., :-1]
    out = []
    for channel in images:
        d = np.abs(np.diff(channel, axis=-1))[pairs]
        out.append(float(1.4826 * np.median(d) / np.sqrt(2.0)) if d.size else 0.0)
    return out


def image_measurements(images: np.ndarray, seed: int = 0) -> dict:
    """What the fingerprint records of a whole (C, Z, Y, X) image and the shift check measures
    again at predict time: ``image_intensity`` (:func:`image_intensity`), ``centroid``
    (:func:`intensity_centroid`) and ``noise`` (:func:`noise_level`)."""
    return {"image_intensity": image_intensity(images, seed), "centroid": intensity_centroid(images),
            "noise": noise_level(images)}
