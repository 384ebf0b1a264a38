"""Synthetic two-timepoint FLAIR brain MRI with stable, new and vanishing MS lesions.

Anatomy: the MNI152 (ICBM 2009a) grey- and white-matter probability maps that the
``nilearn`` wheel ships, read from the package files (offline) and resampled to 2 mm; a
parametric ellipsoid brain (grey-matter shell, white matter, ventricles) when nilearn is
not installed. Per case: a random affine deformation of the anatomy, FLAIR contrast (CSF
dark, white matter darker than grey matter, lesions bright), ellipsoidal white-matter
lesions of 3–15 mm (preferably periventricular), a different smooth bias field and Rician
noise per timepoint, and a sub-voxel misregistration of the follow-up.

Labels (on the baseline grid): 0 background, 1 stable (visible at both timepoints), 2 new
(only at follow-up), 3 vanishing (only at baseline). Channel 0 is the baseline FLAIR,
channel 1 the follow-up.
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage

from volseg.demo.common import ellipsoid, prepare_out_dir, smooth_field, write_dataset_json
from volseg.io.nifti import Geometry, write_image

log = logging.getLogger(__name__)
SPACING = 2.0  # mm, isotropic
LPS_FROM_RAS = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def _template_dir() -> Path | None:
    try:
        import nilearn
    except ImportError:
        return None
    d = Path(nilearn.__file__).parent / "datasets" / "data"
    return d if (d / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz").is_file() else None


@lru_cache(maxsize=2)
def anatomy(use_template: bool | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(gm, wm, csf) probability maps (z, y, x) at 2 mm, cropped to the head.

    ``use_template``: True needs nilearn's MNI152 files, False forces the parametric phantom,
    None uses the template when it is there.
    """
    folder = _template_dir() if use_template in (None, True) else None
    if use_template and folder is None:
        raise RuntimeError("the MNI152 templates need nilearn: pip install nilearn")
    if folder is None:
        return _phantom()
    from volseg.io.nifti import read_image

    gm, g = read_image(folder / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz", dtype=np.float32)
    wm, _ = read_image(folder / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz", dtype=np.float32)
    factors = [s / SPACING for s in g.spacing]
    gm, wm = (ndimage.zoom(a / max(float(a.max()), 1e-6), factors, order=1) for a in (gm, wm))
    brain = ndimage.binary_fill_holes(ndimage.binary_closing((gm + wm) > 0.2, iterations=2))
    csf = np.clip(brain.astype(np.float32) - gm - wm, 0, 1)
    box = tuple(slice(max(0, int(i.min()) - 3), int(i.max()) + 4) for i in np.nonzero(brain))
    return gm[box], wm[box], csf[box]


def _phantom() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    shape = (72, 96, 80)
    c = [s / 2 for s in shape]
    brain = ellipsoid(shape, c, (32, 44, 36)).astype(np.float32)
    inner = ellipsoid(shape, c, (28, 40, 32)).astype(np.float32)
    vent = (ellipsoid(shape, (c[0] + 4, c[1], c[2] - 6), (8, 16, 4)) |
            ellipsoid(shape, (c[0] + 4, c[1], c[2] + 6), (8, 16, 4))).astype(np.float32)
    wm = ndimage.gaussian_filter(inner * (1 - vent), 1.0)
    gm = ndimage.gaussian_filter(brain - inner, 1.0)
    csf = np.clip(brain - wm - gm, 0, 1)
    return gm, wm, csf


def _deform(maps, rng):
    """One random affine (scale 0.92–1.08, rotation ±6° about each axis) applied to every map."""
    shape = maps[0].shape
    ang = np.deg2rad(rng.uniform(-6, 6, 3))
    rz = np.array([[1, 0, 0], [0, np.cos(ang[0]), -np.sin(ang[0])], [0, np.sin(ang[0]), np.cos(ang[0])]])
    ry = np.array([[np.cos(ang[1]), 0, np.sin(ang[1])], [0, 1, 0], [-np.sin(ang[1]), 0, np.cos(ang[1])]])
    rx = np.array([[np.cos(ang[2]), -np.sin(ang[2]), 0], [np.sin(ang[2]), np.cos(ang[2]), 0], [0, 0, 1]])
    m = rz @ ry @ rx @ np.diag(1.0 / rng.uniform(0.92, 1.08, 3))
    c = (np.asarray(shape) - 1) / 2
    off = c - m @ c
    return [ndimage.affine_transform(a, m, off, order=1, mode="constant") for a in maps]


def _lesions(wm, csf, rng, n_stable, n_new, n_vanish):
    """A label map with ellipsoidal white-matter lesions of the given kinds (1 stable, 2 new, 3 vanishing)."""
    shape = wm.shape
    label = np.zeros(shape, np.int16)
    centre = np.asarray(shape) / 2
    cand = np.argwhere(wm > 0.8)
    if len(cand) == 0:
        return label
    # periventricular preference: closer to the centre of the brain is likelier
    dist = np.linalg.norm((cand - centre) / centre, axis=1)
    p = np.exp(-2.5 * dist)
    p /= p.sum()
    kinds = [1] * n_stable + [2] * n_new + [3] * n_vanish
    for kind in kinds:
        z, y, x = cand[rng.choice(len(cand), p=p)]
        radii = rng.uniform(2.0, 7.5, 3) / SPACING  # 4–15 mm diameters
        radii[rng.integers(3)] *= rng.uniform(1.0, 1.6)  # ovoid, like Dawson's fingers
        mask = ellipsoid(shape, (z, y, x), radii) & (wm > 0.3)
        label[mask] = kind
    return label


def _flair(gm, wm, csf, lesion_mask, rng, bias_strength):
    img = 0.75 * gm + 0.55 * wm + 0.12 * csf
    img = img + lesion_mask * rng.uniform(0.45, 0.7) * ndimage.gaussian_filter(lesion_mask.astype(np.float32), 0.7)
    brain = (gm + wm + csf) > 0.05
    img = img * np.exp(smooth_field(img.shape, rng, 24.0, bias_strength))
    sigma = 0.035
    noisy = np.sqrt((img + rng.normal(0, sigma, img.shape)) ** 2 + rng.normal(0, sigma, img.shape) ** 2)
    return (np.where(brain, noisy, 0.0) * 1000.0).astype(np.float32)


def _misregister(image, rng):
    """Follow-up misregistration: a shift of up to one voxel and a rotation of up to 1°."""
    a = np.deg2rad(rng.uniform(-1, 1))
    m = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    c = (np.asarray(image.shape) - 1) / 2
    off = c - m @ c + rng.uniform(-1, 1, 3)
    return ndimage.affine_transform(image, m, off, order=1, mode="constant").astype(np.float32)


def make_ms_case(seed: int, use_template: bool | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, Geometry]:
    """One case: (baseline, follow-up, label, geometry); arrays (z, y, x), float32 FLAIR and int16 labels."""
    rng = np.random.default_rng(seed)
    gm, wm, csf = _deform(anatomy(use_template), rng)
    n_new = int(rng.choice([0, 0, 1, 2, 3]))
    label = _lesions(wm, csf, rng, int(rng.integers(3, 9)), n_new, int(rng.integers(0, 3)))
    base = _flair(gm, wm, csf, np.isin(label, (1, 3)), rng, 0.15)
    follow = _misregister(_flair(gm, wm, csf, np.isin(label, (1, 2)), rng, 0.15), rng)
    origin = tuple(float(v) for v in rng.uniform(-100, -60, 3))
    geom = Geometry(label.shape, (SPACING,) * 3, origin, LPS_FROM_RAS)
    return base, follow, label, geom


def generate_ms_dataset(out_dir: str | os.PathLike, num_cases: int = 12, seed: int = 0,
                        use_template: bool | None = None, num_test: int | None = None) -> Path:
    """Write the two-timepoint MS demo dataset (task "longitudinal").

    Args:
        out_dir: Dataset folder to write (nnU-Net v2 raw layout).
        num_cases: Labelled training cases in ``imagesTr``/``labelsTr``.
        seed: Case ``i`` is generated from ``(seed, i)``, independent of ``num_cases``.
        use_template: See :func:`anatomy`.
        num_test: Test cases in ``imagesTs``, their labels in ``labelsTs`` (default ``max(1, num_cases // 5)``).

    Returns:
        ``out_dir``.

    Example:
        >>> generate_ms_dataset("data/ms_demo", num_cases=12)  # doctest: +SKIP
    """
    from tqdm import tqdm

    out = prepare_out_dir(out_dir)
    num_test = max(1, num_cases // 5) if num_test is None else num_test
    for i in tqdm(range(num_cases + num_test), desc="ms demo", unit="case", leave=False):
        base, follow, label, geom = make_ms_case(seed * 100_003 + i, use_template)
        train = i < num_cases
        case = f"ms_{i:03d}"
        folder = out / ("imagesTr" if train else "imagesTs")
        write_image(folder / f"{case}_0000.nii.gz", base, geom)
        write_image(folder / f"{case}_0001.nii.gz", follow, geom)
        write_image(out / ("labelsTr" if train else "labelsTs") / f"{case}.nii.gz", label, geom)
    write_dataset_json(out, {
        "name": "MSDemo", "description": "synthetic two-timepoint FLAIR with stable, new and vanishing lesions",
        "channel_names": {"0": "FLAIR", "1": "FLAIR"}, "timepoints": {"0": "baseline", "1": "followup"},
        "labels": {"background": 0, "stable": 1, "new": 2, "vanishing": 3},
        "numTraining": num_cases, "file_ending": ".nii.gz", "task": "longitudinal",
        "anatomy": "MNI152 2009a (nilearn)" if (use_template is not False and _template_dir()) else "phantom"})
    return out
