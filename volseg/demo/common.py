"""Helpers shared by the demo dataset generators: shapes, smooth fields, dataset writing."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
from scipy import ndimage

from volseg.errors import VolsegError

MARKER = ".volseg-demo"


def grid(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel index grids (z, y, x) as float32, broadcastable (sparse)."""
    return tuple(np.arange(s, dtype=np.float32).reshape([-1 if i == a else 1 for i in range(3)])
                 for a, s in enumerate(shape))


def ellipsoid(shape, centre_vox, radii_vox) -> np.ndarray:
    """Bool mask of an axis-aligned ellipsoid; centre and radii in voxels (z, y, x)."""
    zz, yy, xx = grid(shape)
    c, r = centre_vox, np.maximum(np.asarray(radii_vox, np.float32), 0.5)
    return ((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2 <= 1.0


def draw_segment(volume: np.ndarray, p0, p1, radius_vox, value, spacing=(1.0, 1.0, 1.0)) -> None:
    """Set voxels within ``radius_vox`` (in units of the finest spacing) of the segment p0–p1 to ``value``."""
    sp = np.asarray(spacing, np.float32) / min(spacing)
    p0, p1 = np.asarray(p0, np.float32), np.asarray(p1, np.float32)
    pad = radius_vox / sp + 1
    lo = np.maximum(np.floor(np.minimum(p0, p1) - pad), 0).astype(int)
    hi = np.minimum(np.ceil(np.maximum(p0, p1) + pad) + 1, volume.shape).astype(int)
    if (hi <= lo).any():
        return
    zz, yy, xx = [np.arange(a, b, dtype=np.float32) for a, b in zip(lo, hi)]
    pts = np.stack(np.meshgrid(zz, yy, xx, indexing="ij"), -1)
    d = p1 - p0
    t = np.clip(((pts - p0) * d * sp ** 2).sum(-1) / max(float((d * d * sp ** 2).sum()), 1e-6), 0, 1)
    closest = p0 + t[..., None] * d
    dist = np.sqrt((((pts - closest) * sp) ** 2).sum(-1))
    sub = volume[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    sub[dist <= radius_vox] = value


def smooth_field(shape, rng: np.random.Generator, scale: float, strength: float) -> np.ndarray:
    """A smooth random field of mean ~0: white noise at a coarse grid, upsampled (cubic)."""
    coarse = [max(2, int(round(s / scale))) for s in shape]
    noise = rng.normal(0, 1, coarse).astype(np.float32)
    field = ndimage.zoom(noise, [s / c for s, c in zip(shape, coarse)], order=3, mode="nearest")
    field = field[: shape[0], : shape[1], : shape[2]]
    return (strength * field / max(float(field.std()), 1e-6)).astype(np.float32)


def rotation_direction(rng: np.random.Generator, max_deg: float, flips: bool) -> tuple[float, ...]:
    """A random orthonormal direction matrix (row-major 3×3): a small rotation about the
    slice axis, optionally with axis flips (as scanners and converters produce)."""
    a = np.deg2rad(rng.uniform(-max_deg, max_deg))
    rot = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    if flips:
        rot = rot @ np.diag([rng.choice([-1.0, 1.0]), rng.choice([-1.0, 1.0]), 1.0])
    return tuple(float(v) for v in rot.ravel())


def prepare_out_dir(out_dir: str | os.PathLike) -> Path:
    """Create ``out_dir``; refuse a non-empty folder that is not a previous demo dataset."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise VolsegError(out, "folder exists, is not empty and is not a volseg demo dataset; choose another --out")
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by volseg demo-data\n")
    return out


def write_dataset_json(out: Path, meta: dict) -> None:
    from volseg.io.atomic import write_json

    write_json(out / "dataset.json", meta)


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    from volseg.io.atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def dump_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2))
