"""Small hand-made datasets for tests that need control over every file (bad inputs, geometry)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from volseg.io.nifti import Geometry, write_image

ROTATED = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # 90° about z


def blob_case(shape=(20, 24, 28), seed=0, n_labels=1, ct=False):
    """A (Z, Y, X) image with ``n_labels`` ellipsoid blobs, and its label map."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    label = np.zeros(shape, np.int16)
    for v in range(1, n_labels + 1):
        c = [rng.uniform(0.3, 0.7) * s for s in shape]
        r = [rng.uniform(0.1, 0.2) * s for s in shape]
        inside = ((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2 <= 1
        label[inside] = v
    base = -800.0 if ct else 100.0
    image = base + 200.0 * label + rng.normal(0, 10, shape)
    return image.astype(np.float32), label


def make_dataset(root: Path, n_cases=3, shape=(20, 24, 28), spacing=(2.5, 0.8, 0.7), direction=ROTATED,
                 channels=("MR",), n_labels=1, ending=".nii.gz", extra=None) -> Path:
    """Write an nnU-Net v2 raw dataset of ``n_cases`` blob cases under ``root``."""
    root = Path(root)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    geom = Geometry(tuple(shape), tuple(spacing), (12.5, -40.0, 7.0), direction)
    for i in range(n_cases):
        image, label = blob_case(shape, seed=i, n_labels=n_labels, ct=channels[0] == "CT")
        for c in range(len(channels)):
            write_image(root / "imagesTr" / f"case_{i:03d}_{c:04d}{ending}", image * (1 + 0.5 * c), geom)
        write_image(root / "labelsTr" / f"case_{i:03d}{ending}", label, geom)
    labels = {"background": 0, **{f"class{v}": v for v in range(1, n_labels + 1)}}
    meta = {"channel_names": {str(c): n for c, n in enumerate(channels)}, "labels": labels,
            "numTraining": n_cases, "file_ending": ending, **(extra or {})}
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    return root
