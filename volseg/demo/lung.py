"""Synthetic chest CT with lung nodules, in Hounsfield units.

A small chest phantom per case: body (soft tissue with a fat layer), two lungs
(parenchyma with texture), spine and ribs, a branching vessel tree in each lung (tubes
that taper from the hilum outwards: the main source of false-positive detections), the
trachea and main bronchi (air with a soft-tissue wall), and 0–4 nodules of 3–30 mm inside
the lungs, solid (+20…+60 HU) or ground-glass (−600…−300 HU). Anisotropic spacing
(0.6–0.9 mm in-plane, 1–2.5 mm slices), a non-identity direction (a rotation about the
slice axis, sometimes axis flips) and a random origin per case.

Labels: an instance map per case (0 background, 1..n nodules) with
``labelsTr/CASE.json`` = {"instances": {"1": 0, ...}} (class 0 = nodule), and a LUNA16-style
``annotations.csv`` (seriesuid, coordX, coordY, coordZ in world mm, diameter_mm); the test
cases' references go to ``labelsTs/`` and ``annotationsTs.csv``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from scipy import ndimage

from volseg.demo.common import (draw_segment, dump_json, ellipsoid, grid, prepare_out_dir, rotation_direction,
                                smooth_field, write_csv, write_dataset_json)
from volseg.io.nifti import Geometry, write_image

AIR, LUNG, FAT, SOFT, BLOOD, BONE = -1000.0, -850.0, -100.0, 40.0, 45.0, 700.0


def _vessel_tree(vessels: np.ndarray, lung: np.ndarray, start, outward, rng, spacing, depth: int = 7) -> None:
    """Random branching tubes from ``start`` (voxel), heading ``outward`` on average, radius
    tapering from 2.5 mm by 0.6–0.85 per generation; drawn into ``vessels`` (kept inside the lung later)."""
    finest = min(spacing)
    stack = [(np.asarray(start, float), np.asarray(outward, float) + rng.normal(0, 0.5, 3), 2.5, 0)]
    while stack:
        p, d, r, level = stack.pop()
        d = d / (np.linalg.norm(d) + 1e-9)
        q = np.clip(p + d * rng.uniform(10, 20) / np.asarray(spacing), 0, np.asarray(vessels.shape) - 1)
        draw_segment(vessels, p, q, r / finest, 1, spacing)
        if level < depth and r > 0.4 and lung[tuple(np.round(q).astype(int))]:
            for _ in range(2):
                stack.append((q, d + rng.normal(0, 0.6, 3), r * rng.uniform(0.6, 0.85), level + 1))


def _airways(hu: np.ndarray, body_c, lungs_c, spacing) -> None:
    finest = min(spacing)
    top = (0, body_c[1] - 0.15 * hu.shape[1], body_c[2])
    carina = (hu.shape[0] * 0.45, top[1], top[2])
    for p0, p1, r in [(top, carina, 5.0)] + [(carina, c, 3.5) for c in lungs_c]:
        draw_segment(hu, p0, p1, (r + 1.2) / finest, SOFT, spacing)  # wall
        draw_segment(hu, p0, p1, r / finest, AIR, spacing)


def _nodules(hu, instances, lung, rng, spacing, n):
    """Draw ``n`` nodules inside ``lung``; returns [(centre voxel (z, y, x), diameter mm)]."""
    out = []
    inner = ndimage.binary_erosion(lung, iterations=3)
    cand = np.argwhere(inner)
    for i in range(n):
        if len(cand) == 0:
            break
        d_mm = float(np.exp(rng.uniform(np.log(3.0), np.log(30.0))))
        c = cand[rng.integers(len(cand))].astype(float)
        radii = (d_mm / 2) / np.asarray(spacing) * rng.uniform(0.85, 1.15, 3)
        mask = ellipsoid(hu.shape, c, radii) & lung
        if mask.sum() < 2:
            continue
        solid = rng.random() < 0.6
        value = rng.uniform(20, 60) if solid else rng.uniform(-600, -300)
        soft_edge = ndimage.gaussian_filter(mask.astype(np.float32), 0.6)
        hu[:] = np.where(mask, hu + (value - hu) * np.clip(soft_edge * 1.5, 0, 1), hu)
        instances[mask] = len(out) + 1
        centre = np.argwhere(instances == len(out) + 1).mean(0)
        out.append((centre, float(2 * (3 * mask.sum() * np.prod(spacing) / (4 * np.pi)) ** (1 / 3))))
    return out


def make_lung_case(seed: int, shape: tuple[int, int, int] | None = None):
    """One case: (hu float32 (z, y, x), instance map int16, geometry, [(centre voxel, diameter mm)])."""
    rng = np.random.default_rng(seed)
    inplane, slice_mm = rng.uniform(0.6, 0.9), rng.uniform(1.0, 2.5)
    if shape is None:
        shape = (int(rng.integers(64, 97)), 128, 128)
    spacing = (slice_mm, inplane, inplane)
    zz, yy, xx = grid(shape)
    c = np.asarray(shape, np.float32) / 2
    hu = np.full(shape, AIR, np.float32)
    ry, rx = shape[1] * rng.uniform(0.36, 0.42), shape[2] * rng.uniform(0.44, 0.48)
    body = ((yy - c[1]) / ry) ** 2 + ((xx - c[2]) / rx) ** 2 <= 1
    body = np.broadcast_to(body, shape)
    inner_body = ((yy - c[1]) / (ry - 4)) ** 2 + ((xx - c[2]) / (rx - 4)) ** 2 <= 1
    hu[body] = FAT
    hu[np.broadcast_to(inner_body, shape)] = SOFT
    lungs_c = []
    lung = np.zeros(shape, bool)
    for side in (-1, 1):
        lc = (c[0] + 2, c[1] - 0.05 * shape[1], c[2] + side * 0.22 * shape[2])
        lr = (shape[0] * 0.48, ry * 0.72, rx * 0.38)
        lung |= ellipsoid(shape, lc, lr)
        lungs_c.append((lc[0], lc[1], lc[2] - side * 0.08 * shape[2]))
    hu[lung] = LUNG + smooth_field(shape, rng, 4.0, 25.0)[lung]
    spine = ((yy - (c[1] + ry * 0.72)) ** 2 + (xx - c[2]) ** 2) <= (0.07 * shape[2]) ** 2
    hu[np.broadcast_to(spine, shape)] = BONE
    rib_ring = ((((yy - c[1]) / (ry - 6)) ** 2 + ((xx - c[2]) / (rx - 6)) ** 2) > 0.9) & np.broadcast_to(inner_body, shape)
    ribs = rib_ring & ((np.floor(zz * slice_mm / 12.0) % 2) == 0) & (np.abs(zz * slice_mm % 12.0 - 3) < 2)
    hu[ribs] = BONE
    vessels = np.zeros(shape, np.uint8)
    for side, lc in zip((-1, 1), lungs_c):
        for out in ((1, 0, side), (-1, 0, side), (0, -1, side), (0, 1, side)):  # up, down, front, back
            _vessel_tree(vessels, lung, lc, out, rng, spacing)
    hu[(vessels > 0) & lung] = BLOOD + rng.normal(0, 5)
    _airways(hu, c, lungs_c, spacing)
    instances = np.zeros(shape, np.int16)
    nodules = _nodules(hu, instances, lung & (hu < -500), rng, spacing, int(rng.integers(0, 5)))
    hu = hu + rng.normal(0, 20, shape).astype(np.float32)
    hu = ndimage.gaussian_filter(hu, (0.4, 0.6, 0.6)).astype(np.float32)
    origin = tuple(float(v) for v in rng.uniform(-200, 0, 3))
    geom = Geometry(shape, tuple(float(s) for s in spacing), origin, rotation_direction(rng, 10.0, rng.random() < 0.3))
    return np.clip(hu, -1024, 3071).astype(np.float32), instances, geom, nodules


def _drop_hidden(instances: np.ndarray, nodules: list) -> tuple[np.ndarray, list]:
    """Drop the nodules that later ones covered completely, numbering the rest 1..m in order."""
    present = set(np.unique(instances).tolist())
    keep = [k for k in range(len(nodules)) if k + 1 in present]
    lut = np.zeros(len(nodules) + 1, np.int16)
    lut[[k + 1 for k in keep]] = np.arange(1, len(keep) + 1)
    return lut[instances], [nodules[k] for k in keep]


def generate_lung_dataset(out_dir: str | os.PathLike, num_cases: int = 12, seed: int = 0,
                          num_test: int | None = None, shape: tuple[int, int, int] | None = None) -> Path:
    """Write the chest-CT nodule demo dataset (task "detection", instance labels).

    Args:
        out_dir: Dataset folder to write (nnU-Net v2 raw layout plus instance JSON files).
        num_cases: Labelled cases; case ``i`` is generated from ``(seed, i)``.
        seed: Dataset seed.
        num_test: Unlabelled cases in ``imagesTs`` (default ``max(1, num_cases // 5)``).
        shape: Force the volume shape (z, y, x) (default: 64–96 slices of 128 × 128).

    Returns:
        ``out_dir``; ``annotations.csv`` there lists every nodule of the training cases in world
        coordinates, ``annotationsTs.csv`` those of the test cases (whose instance maps are in
        ``labelsTs/``, for scoring only) and ``scansTs.txt`` the test cases.
    """
    from tqdm import tqdm

    out = prepare_out_dir(out_dir)
    num_test = max(1, num_cases // 5) if num_test is None else num_test
    rows: dict[str, list] = {"Tr": [], "Ts": []}
    for i in tqdm(range(num_cases + num_test), desc="lung demo", unit="case", leave=False):
        hu, inst, geom, nodules = make_lung_case(seed * 100_003 + i, shape)
        inst, nodules = _drop_hidden(inst, nodules)
        case, part = f"lung_{i:03d}", "Ts" if i >= num_cases else "Tr"
        write_image(out / f"images{part}" / f"{case}_0000.nii.gz", hu, geom)
        write_image(out / f"labels{part}" / f"{case}.nii.gz", inst, geom)
        dump_json(out / f"labels{part}" / f"{case}.json", {"instances": {str(k + 1): 0 for k in range(len(nodules))}})
        for centre, diameter in nodules:
            x, y, z = geom.voxel_to_world(centre[None])[0]
            rows[part].append([case, round(x, 3), round(y, 3), round(z, 3), round(diameter, 3)])
    columns = ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
    write_csv(out / "annotations.csv", columns, rows["Tr"])
    write_csv(out / "annotationsTs.csv", columns, rows["Ts"])
    (out / "scansTs.txt").write_text("".join(f"lung_{i:03d}\n" for i in range(num_cases, num_cases + num_test)))
    write_dataset_json(out, {
        "name": "LungDemo", "description": "synthetic chest CT with solid and ground-glass nodules",
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "nodule": 1}, "numTraining": num_cases,
        "file_ending": ".nii.gz", "task": "detection", "instance_labels": True})
    return out
