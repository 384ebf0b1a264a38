"""Preprocessing of one case: crop to the non-zero region, normalize, resample.

The same functions serve training (image and label) and inference (image only); the
returned properties are what inference needs to put a prediction back on the input grid.
"""

from __future__ import annotations

import numpy as np

from volseg.io.nifti import Geometry
from volseg.planning.spacing import resampled_shape
from volseg.preprocessing.crop import bbox_of, box_shape, crop, nonzero_mask
from volseg.preprocessing.normalize import normalize
from volseg.preprocessing.resample import resample_image, resample_label

MAX_LOCATIONS_PER_CLASS = 10_000
MAX_LOCATIONS_PER_INSTANCE = 1_000


def preprocess_image(images: np.ndarray, geometry: Geometry, plans: dict, config: dict) -> tuple[np.ndarray, dict]:
    """Crop, normalize and resample a (C, Z, Y, X) image to the configuration's grid.

    Args:
        images: (C, Z, Y, X) float32 image on ``geometry``'s grid.
        geometry: Geometry of the input grid.
        plans: The plan (normalization, cropping).
        config: One configuration of the plan (spacing, resampling).

    Returns:
        ``(data, properties)``: float32 (C, z, y, x) on the target grid, and a dict with
        ``original_geometry``, ``crop_bbox`` ([[z0, z1], [y0, y1], [x0, x1]], half-open),
        ``shape_after_crop``, ``shape_after_resampling`` and ``spacing`` (z, y, x, mm).
    """
    mask = nonzero_mask(images)
    box = bbox_of(mask) if plans.get("crop_to_nonzero", True) else [[0, s] for s in images.shape[1:]]
    cropped = crop(images, box)
    data = normalize(cropped, plans["normalization"], crop(mask, box))
    target = resampled_shape(box_shape(box), geometry.spacing, config["spacing"])
    data = resample_image(data, target, config["resampling"]["image"]).numpy()
    props = {"original_geometry": geometry.to_dict(), "crop_bbox": box, "shape_after_crop": box_shape(box),
             "shape_after_resampling": list(target), "spacing": list(config["spacing"])}
    return data, props


def preprocess_label(label: np.ndarray, props: dict, values: list[int], mode: str) -> np.ndarray:
    """Crop and resample a (Z, Y, X) label map like the image it belongs to; int16 result."""
    cropped = crop(label, props["crop_bbox"])
    return resample_label(cropped, props["shape_after_resampling"], values, mode).numpy()


def class_locations(seg: np.ndarray, values: list[int], seed: int = 0,
                    max_per_value: int = MAX_LOCATIONS_PER_CLASS) -> dict[str, list[list[int]]]:
    """Up to ``max_per_value`` random (z, y, x) voxel indices per foreground value."""
    rng = np.random.default_rng(seed)
    out = {}
    for v in values:
        if v == 0:
            continue
        idx = np.flatnonzero(seg == v)
        if idx.size == 0:
            continue
        if idx.size > max_per_value:
            idx = np.sort(rng.choice(idx, max_per_value, replace=False))
        out[str(v)] = np.stack(np.unravel_index(idx, seg.shape), axis=1).astype(int).tolist()
    return out
