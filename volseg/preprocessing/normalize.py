"""Intensity normalization of one case, as the plan's ``normalization`` entries say."""

from __future__ import annotations

import numpy as np


def normalize(images: np.ndarray, schemes: list[dict], nonzero: np.ndarray | None = None) -> np.ndarray:
    """Normalize every channel of a (C, Z, Y, X) float32 image.

    Args:
        images: (C, Z, Y, X) float32 array; not modified.
        schemes: One plan ``normalization`` entry per channel ("ct", "zscore" or "none").
        nonzero: (Z, Y, X) bool mask of the non-zero region, used by "zscore" entries
            with ``use_nonzero_mask`` (voxels outside it are set to 0).

    Returns:
        New (C, Z, Y, X) float32 array.
    """
    out = np.empty_like(images, dtype=np.float32)
    for entry in schemes:
        c = entry["channel"]
        x = images[c].astype(np.float32, copy=True)
        if entry["scheme"] == "ct":
            lo, hi = entry["clip"]
            np.clip(x, lo, hi, out=x)
            x -= entry["mean"]
            x /= max(entry["std"], 1e-8)
        elif entry["scheme"] == "zscore":
            if entry.get("use_nonzero_mask") and nonzero is not None and nonzero.any():
                vals = x[nonzero]
                x = (x - vals.mean()) / max(float(vals.std()), 1e-8)
                x[~nonzero] = 0
            else:
                x = (x - x.mean()) / max(float(x.std()), 1e-8)
        out[c] = x
    return out
