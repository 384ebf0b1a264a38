"""Tiny preprocessed cases on disk, written in the format of docs/formats.md."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from volseg.preprocessing.case import class_locations

SHAPE = (40, 40, 40)


def _ball(shape, center, radius) -> np.ndarray:
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    return (zz - center[0]) ** 2 + (yy - center[1]) ** 2 + (xx - center[2]) ** 2 <= radius ** 2


def write_case(folder: Path, case_id: str, seed: int, small_blob: bool = True, shape=SHAPE) -> None:
    """A case with a big label-1 ball and (optionally) a small label-2 ball far from it.

    Two channels; channel 1 is an exact copy of channel 0 (for spatial consistency checks).
    """
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, np.int16)
    label[_ball(shape, (12 + seed, 12, 13), 7)] = 1
    if small_blob:
        label[_ball(shape, (29, 28 - seed, 30), 2)] = 2
    image = (rng.normal(0, 1, shape) + 3.0 * label).astype(np.float32)
    np.save(folder / f"{case_id}.npy", np.stack([image, image]))
    np.save(folder / f"{case_id}_seg.npy", label[None])
    props = {"case_id": case_id, "spacing": [1.0, 1.0, 1.0], "shape_after_resampling": list(shape),
             "class_locations": class_locations(label, [0, 1, 2], seed)}
    (folder / f"{case_id}.json").write_text(json.dumps(props))


@pytest.fixture(name="write_case")
def write_case_fixture():
    """The :func:`write_case` helper (a fixture, so tests need not import this conftest)."""
    return write_case


@pytest.fixture(scope="session")
def case_dir(tmp_path_factory) -> Path:
    """case_000, case_001 (labels 1 and 2) and case_002 (label 1 only)."""
    folder = tmp_path_factory.mktemp("preprocessed")
    for i in range(3):
        write_case(folder, f"case_{i:03d}", seed=i, small_blob=i < 2)
    return folder


@pytest.fixture(scope="session")
def cases(case_dir):
    from volseg.data.cases import load_cases

    return load_cases(case_dir, ["case_000", "case_001", "case_002"])
