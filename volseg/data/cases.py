"""Preprocessed training cases, opened lazily as memory maps.

A case on disk (see ``docs/formats.md``, written by :mod:`volseg.preprocessing.run`) is
``CASE.npy`` float32 (C, Z, Y, X), ``CASE_seg.npy`` int16 (1, Z, Y, X) and ``CASE.json``
(properties, incl. ``class_locations``).  :class:`Case` reads the properties eagerly (they
are small) and maps the arrays on first use, in the process that uses them: a case can be
pickled to a spawned worker without copying any voxels.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from volseg.errors import DatasetError
from volseg.io.npy import npy_complete


LABEL_FILES = {"classes": "_seg.npy", "instances": "_inst.npy"}


@dataclass
class Case:
    """One preprocessed training case.

    Attributes:
        case_id: Case identifier (file stem).
        folder: Folder that holds ``CASE.npy``, ``CASE_seg.npy`` and ``CASE.json``.
        properties: The parsed ``CASE.json``.
        shape: Spatial shape (Z, Y, X) of the preprocessed arrays, voxels.
        num_channels: C of ``CASE.npy``.
        class_locations: Label value → (N, 3) int64 array of (z, y, x) voxel indices of that
            label (a random subset from preprocessing); only values with N > 0. With
            ``labels="instances"``: instance id → voxels of that instance.
        labels: ``"classes"`` (``CASE_seg.npy``, class values) or ``"instances"``
            (``CASE_inst.npy``, instance ids; detection).
    """

    case_id: str
    folder: Path
    properties: dict
    shape: tuple[int, int, int]
    num_channels: int
    class_locations: dict[int, np.ndarray]
    labels: str = "classes"
    _image: np.ndarray | None = field(default=None, repr=False, compare=False)
    _seg: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def image_path(self) -> Path:
        return self.folder / f"{self.case_id}.npy"

    @property
    def seg_path(self) -> Path:
        return self.folder / f"{self.case_id}{LABEL_FILES[self.labels]}"

    def image(self) -> np.ndarray:
        """The image as a read-only memory map, float32 (C, Z, Y, X)."""
        if self._image is None:
            self._image = np.load(self.image_path, mmap_mode="r")
        return self._image

    def seg(self) -> np.ndarray:
        """The label map as a read-only memory map, int16 (1, Z, Y, X)."""
        if self._seg is None:
            self._seg = np.load(self.seg_path, mmap_mode="r")
        return self._seg

    def __getstate__(self) -> dict:
        # memory maps are reopened in the receiving process instead of being pickled as copies
        state = dict(self.__dict__)
        state["_image"] = state["_seg"] = None
        return state


def _parse_locations(raw: dict, path: Path, shape: tuple[int, ...]) -> dict[int, np.ndarray]:
    out = {}
    for key, locs in raw.items():
        try:
            value = int(key)
        except ValueError:
            raise DatasetError(path, f"class_locations key {key!r} is not an integer label value") from None
        arr = np.asarray(locs, dtype=np.int64).reshape(-1, 3) if len(locs) else np.zeros((0, 3), np.int64)
        if arr.size and (arr.min() < 0 or np.any(arr.max(axis=0) >= np.asarray(shape))):
            raise DatasetError(path, f"class_locations[{key!r}] has voxels outside the array shape {list(shape)}")
        if len(arr):
            out[value] = arr
    return out


def load_case(folder: str | os.PathLike, case_id: str, labels: str = "classes") -> Case:
    """Open one preprocessed case and check that its files agree.

    Args:
        folder: ``OUT/preprocessed/<configuration>/``.
        case_id: Case identifier.
        labels: ``"classes"`` or ``"instances"``: which label map training reads.

    Returns:
        A :class:`Case` (arrays mapped lazily).

    Raises:
        DatasetError: A file is missing, or shapes/dtypes disagree with ``docs/formats.md``.
    """
    folder = Path(folder)
    props_path = folder / f"{case_id}.json"
    try:
        props = json.loads(props_path.read_text())
    except FileNotFoundError:
        raise DatasetError(props_path, "missing; run `volseg plan` (preprocessing) first") from None
    except json.JSONDecodeError as e:
        raise DatasetError(props_path, f"invalid JSON ({e})") from None
    if labels not in LABEL_FILES:
        raise ValueError(f"labels: expected one of {sorted(LABEL_FILES)}, got {labels!r}")
    image_path, seg_path = folder / f"{case_id}.npy", folder / f"{case_id}{LABEL_FILES[labels]}"
    for p in (image_path, seg_path):
        if not p.is_file():
            raise DatasetError(p, "missing; training needs the preprocessed image and label map")
        if not npy_complete(p):
            raise DatasetError(p, "damaged or cut short (its length does not match its header); "
                               "run `volseg plan` again to rewrite it")
    image = np.load(image_path, mmap_mode="r")
    seg = np.load(seg_path, mmap_mode="r")
    if image.ndim != 4:
        raise DatasetError(image_path, f"expected a (C, Z, Y, X) array, got shape {image.shape}")
    if seg.shape != (1, *image.shape[1:]):
        raise DatasetError(seg_path, f"expected shape {(1, *image.shape[1:])} to match the image, got {seg.shape}")
    if not np.issubdtype(seg.dtype, np.integer):
        raise DatasetError(seg_path, f"expected an integer label map, got dtype {seg.dtype}")
    shape = tuple(int(s) for s in image.shape[1:])
    key = "class_locations" if labels == "classes" else "instance_locations"
    if labels == "instances" and key not in props:
        raise DatasetError(props_path, "has no instance_locations; run `volseg plan` again to preprocess the "
                           "instance maps")
    locations = _parse_locations(props.get(key, {}), props_path, shape)
    return Case(case_id, folder, props, shape, int(image.shape[0]), locations, labels)


def load_cases(folder: str | os.PathLike, case_ids: Iterable[str], labels: str = "classes") -> list[Case]:
    """Open several preprocessed cases (see :func:`load_case`).

    Example:
        >>> cases = load_cases("runs/demo/preprocessed/3d_fullres", ["case_000", "case_001"])  # doctest: +SKIP
    """
    cases = [load_case(folder, c, labels) for c in case_ids]
    if not cases:
        raise DatasetError(folder, "no cases given to load")
    channels = {c.num_channels for c in cases}
    if len(channels) > 1:
        raise DatasetError(folder, f"cases disagree on the number of channels: {sorted(channels)}")
    return cases
