"""Connected-component rules applied to predicted label maps.

Rules are plain data (stored in the model folder's ``postprocessing.json``)::

    {"rules": [{"kind": "remove_small", "label": 1, "min_volume_mm3": 10.0},
               {"kind": "keep_largest", "label": 2}]}

``label`` is a label value, or a list of values treated as one foreground (a region).
"""

from __future__ import annotations

import numpy as np


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import cc3d

    comps = cc3d.connected_components(mask.astype(np.uint8), connectivity=26)
    counts = np.bincount(comps.ravel())
    return comps, counts


def remove_small_components(labels: np.ndarray, values: int | list[int], min_volume_mm3: float,
                            spacing: tuple[float, float, float]) -> np.ndarray:
    """Set components of ``values`` smaller than ``min_volume_mm3`` to background.

    Args:
        labels: (Z, Y, X) integer label map; not modified.
        values: Label value(s) whose union forms the foreground.
        min_volume_mm3: Volume threshold in mm³.
        spacing: Voxel spacing (z, y, x) in mm.

    Returns:
        New (Z, Y, X) label map.
    """
    mask = np.isin(labels, np.atleast_1d(values))
    if not mask.any():
        return labels.copy()
    comps, counts = _components(mask)
    voxel = float(np.prod(spacing))
    small = np.flatnonzero(counts * voxel < min_volume_mm3)
    small = small[small > 0]
    out = labels.copy()
    out[np.isin(comps, small)] = 0
    return out


def keep_largest_component(labels: np.ndarray, values: int | list[int]) -> np.ndarray:
    """Keep only the largest connected component of ``values`` (a (Z, Y, X) label map)."""
    mask = np.isin(labels, np.atleast_1d(values))
    if not mask.any():
        return labels.copy()
    comps, counts = _components(mask)
    counts[0] = 0
    largest = int(np.argmax(counts))
    out = labels.copy()
    out[mask & (comps != largest)] = 0
    return out


def apply_rules(labels: np.ndarray, rules: list[dict], spacing: tuple[float, float, float]) -> np.ndarray:
    """Apply post-processing ``rules`` in order to a (Z, Y, X) label map."""
    out = labels
    for rule in rules:
        if rule["kind"] == "remove_small":
            out = remove_small_components(out, rule["label"], float(rule["min_volume_mm3"]), spacing)
        elif rule["kind"] == "keep_largest":
            out = keep_largest_component(out, rule["label"])
        else:
            raise ValueError(f"unknown post-processing rule kind {rule['kind']!r}")
    return out
