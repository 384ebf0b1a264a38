"""Shifted copies of demo cases: inputs that an MS model was not trained for.

Each shift maps a case's (C, Z, Y, X) float32 image and geometry to a new pair; arrays in,
arrays out (:func:`apply_shift`), and :func:`write_shifted` writes a folder of them:

- ``noise``: Rician noise three times the demo's (σ 0.035 of white matter → 0.105);
- ``scale``: intensities × 4 (another scanner's units);
- ``bias``: a strong smooth multiplicative bias field (log-std 0.6: ×1.8 / ×0.55 at one σ, the demo 0.15);
- ``spacing``: 5 mm slices instead of 2 (z resampled, the header says so);
- ``inversion``: contrast inverted inside the head (CSF bright, lesions dark);
- ``ct``: a chest CT of the lung demo in every channel;
- ``swap``: baseline and follow-up exchanged;
- ``empty``: every voxel 0;
- ``flip``: the voxels flipped front to back (the y axis of the demo's arrays) while the header
  still claims the old direction. (A left–right flip of a nearly symmetric head cannot be seen
  in the voxels at all; only the header or a side marker can tell.)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from scipy import ndimage

from volseg.demo.common import smooth_field
from volseg.io.nifti import Geometry, write_image

SHIFTS = ("noise", "scale", "bias", "spacing", "inversion", "ct", "swap", "empty", "flip")
DEMO_NOISE = 0.035 * 1000.0  # the MS demo's Rician σ, in its intensity units


def apply_shift(name: str, images: np.ndarray, geometry: Geometry, seed: int = 0) -> tuple[np.ndarray, Geometry]:
    """The shifted ``(images, geometry)`` of a (C, Z, Y, X) float32 case (see the module docstring).

    Raises:
        ValueError: ``name`` is not one of :data:`SHIFTS`.
    """
    rng = np.random.default_rng(seed)
    x = images.astype(np.float32, copy=True)
    head = (x > 0).any(axis=0)
    if name == "noise":
        extra = np.sqrt(3.0 ** 2 - 1.0) * DEMO_NOISE  # on top of the noise already there
        noisy = np.sqrt((x + rng.normal(0, extra, x.shape)) ** 2 + rng.normal(0, extra, x.shape) ** 2)
        return np.where(head, noisy, 0.0).astype(np.float32), geometry
    if name == "scale":
        return x * 4.0, geometry
    if name == "bias":
        field = np.exp(smooth_field(x.shape[1:], rng, 16.0, 0.6)).astype(np.float32)
        return x * field, geometry
    if name == "spacing":
        factor = geometry.spacing[0] / 5.0
        out = np.stack([ndimage.zoom(c, (factor, 1.0, 1.0), order=1) for c in x]).astype(np.float32)
        spacing = (5.0, *geometry.spacing[1:])
        return out, Geometry(out.shape[1:], spacing, geometry.origin, geometry.direction)
    if name == "inversion":
        top = np.percentile(x[:, head], 99.5) if head.any() else 1.0
        return np.where(head, top - x, 0.0).clip(0).astype(np.float32), geometry
    if name == "ct":
        from volseg.demo.lung import make_lung_case

        hu, _, ct_geom, _ = make_lung_case(seed)
        return np.stack([hu] * x.shape[0]), ct_geom
    if name == "swap":
        return x[::-1].copy(), geometry
    if name == "empty":
        return np.zeros_like(x), geometry
    if name == "flip":
        return x[:, :, ::-1].copy(), geometry
    raise ValueError(f"unknown shift {name!r}; known: {', '.join(SHIFTS)}")


def write_shifted(images_dir: str | os.PathLike, out_dir: str | os.PathLike, case_ids: list[str], shift: str,
                  ending: str = ".nii.gz", seed: int = 0, tag: bool = False) -> Path:
    """Write ``shift`` of each case of ``images_dir`` (``CASE_000C`` channel files) to ``out_dir``
    under the same names (``CASE_<shift>_000C`` with ``tag``); returns ``out_dir``."""
    from volseg.io.nifti import read_channels

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for k, case in enumerate(case_ids):
        files = sorted(Path(images_dir).glob(f"{case}_[0-9][0-9][0-9][0-9]{ending}"))
        images, geometry = read_channels(files)
        shifted, geom = apply_shift(shift, images, geometry, seed=seed + k)
        for c in range(shifted.shape[0]):
            write_image(out / f"{case}{'_' + shift if tag else ''}_{c:04d}{ending}", shifted[c], geom)
    return out
