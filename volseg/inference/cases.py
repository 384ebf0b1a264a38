"""Finding and reading the cases to predict: a folder of ``CASE_XXXX<ending>`` files, or single files."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from volseg.errors import DatasetError
from volseg.io.dataset import check_case_channels, group_channel_files
from volseg.io.nifti import NIFTI_ENDINGS, Geometry, read_channels


@dataclass(frozen=True)
class InputCase:
    """One case to predict: its id and one file per channel (``None`` where one is missing)."""

    case_id: str
    images: tuple[Path | None, ...]


def _ending_of(path: Path) -> str:
    return next(e for e in NIFTI_ENDINGS if path.name.endswith(e))


def find_input_cases(inputs: list[str | os.PathLike], num_channels: int) -> list[InputCase]:
    """Group the inputs into cases.

    Args:
        inputs: Folders holding ``CASE_0000.nii.gz``-style files (both endings accepted),
            or image files. For a single-channel model a file need not carry the
            ``_0000`` suffix: its name without the ending is the case id.
        num_channels: Channels the model expects.

    Returns:
        Cases sorted by id; a case with a missing channel keeps ``None`` in its place
        (reported when it is read, so that the other cases still run).

    Raises:
        DatasetError: An input does not exist, or nothing to predict was found.
    """
    groups: dict[str, dict[int, Path]] = {}
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            for ending in NIFTI_ENDINGS:
                for case_id, chans in group_channel_files(p, ending).items():
                    groups.setdefault(case_id, {}).update(chans)
            if num_channels == 1:  # plain names (no _0000) in a folder of single-channel images
                for f in sorted(p.iterdir()):
                    if f.name.endswith(NIFTI_ENDINGS) and not f.name.startswith("."):
                        stem = f.name[: -len(_ending_of(f))]
                        if not any(f == c for chans in groups.values() for c in chans.values()):
                            groups.setdefault(stem, {0: f})
        elif p.is_file() and p.name.endswith(NIFTI_ENDINGS):
            stem = p.name[: -len(_ending_of(p))]
            if len(stem) > 5 and stem[-5] == "_" and stem[-4:].isdigit():
                groups.setdefault(stem[:-5], {})[int(stem[-4:])] = p
            else:
                groups.setdefault(stem, {})[0] = p
        else:
            raise DatasetError(p, "input not found (expected a folder or a .nii/.nii.gz file)")
    if not groups:
        raise DatasetError(", ".join(str(i) for i in inputs), "no .nii/.nii.gz images to predict")
    cases = []
    for cid in sorted(groups):
        n = max(num_channels, max(groups[cid]) + 1)
        cases.append(InputCase(cid, tuple(groups[cid].get(c) for c in range(n))))
    return cases


def read_input_case(case: InputCase, num_channels: int) -> tuple[np.ndarray, Geometry]:
    """Read and check the channels of one case.

    Returns:
        ``(images, geometry)``: float32 (C, Z, Y, X) and the geometry of channel 0.

    Raises:
        DatasetError: A channel is missing, unreadable, or differs in geometry from channel 0.
    """
    found = {c: p for c, p in enumerate(case.images) if p is not None}
    some = next(iter(found.values()), None)
    folder = some.parent if some is not None else Path(".")
    check_case_channels(case.case_id, found, num_channels, folder, _ending_of(some) if some is not None else ".nii.gz")
    return read_channels(case.images[:num_channels])
