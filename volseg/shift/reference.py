"""The shift check's reference fitted on raw images, for a model folder that training did not
write (e.g. one made by ``volseg import-nnunet``).

One pass over up to :data:`~volseg.shift.features.MAX_CASES` images chosen at random: each
is read as ``predict`` reads a case, measured for the fingerprint score
(:func:`~volseg.shift.statistics.case_statistics`, with no foreground, since the images come
without labels), preprocessed with the model's plan, and run through every fold's network for
its feature reference. The fingerprint statistics go to ``MODEL/shift_fingerprint.json``
(:data:`FILE_NAME`, JSON), the features to ``fold_K/shift_features.pt``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from volseg.errors import ModelError, VolsegError
from volseg.shift.features import FILE_NAME as FEATURES_FILE
from volseg.shift.features import fit_feature_references
from volseg.shift.statistics import FingerprintReference, case_statistics

FILE_NAME = "shift_fingerprint.json"
FORMAT = "volseg-shift-fingerprint"


@dataclass(frozen=True)
class FittedReference:
    """What :func:`fit_reference_from_images` wrote: one feature file per fold, and the
    fingerprint statistics file with the number of cases it holds."""

    features: list[Path]
    fingerprint: Path
    cases: int


class _MeasuredCases:
    """The cases of ``inputs`` preprocessed for ``model`` one at a time, when indexed (a
    sequence for :func:`fit_feature_references`, which reads each chosen case once); each
    read also keeps the case's fingerprint statistics in :attr:`statistics`."""

    def __init__(self, model, cases: list) -> None:
        self.model, self.cases = model, cases
        self.statistics: dict[str, dict[str, float]] = {}

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, i: int) -> np.ndarray:
        from volseg.inference.cases import read_input_case
        from volseg.inference.predictor import prepare

        images, geometry = read_input_case(self.cases[i], self.model.num_channels)
        self.statistics[self.cases[i].case_id] = case_statistics(images, geometry.spacing, None)
        return prepare(self.model, images, geometry)[0]


def fit_reference_from_images(model_dir: str | os.PathLike, inputs: Sequence[str | os.PathLike],
                              device: torch.device | str = "cpu", seed: int = 0) -> FittedReference:
    """Fit and write the shift check's fingerprint statistics and every fold's feature reference
    from raw images like the training data.

    Args:
        model_dir: The model folder.
        inputs: Folders of ``CASE_0000.nii.gz``-style files or image files, as ``predict``
            takes them; up to :data:`~volseg.shift.features.MAX_CASES` cases are chosen at
            random (``seed``).
        device: Where the networks run.

    Raises:
        VolsegError: No case in ``inputs``, a case that cannot be read, or a network without
            the decoder whose input the features are taken from. Nothing is written then.
    """
    from volseg.inference.cases import find_input_cases
    from volseg.io.atomic import write_json
    from volseg.model import fold_dir, load_model

    model = load_model(model_dir, None, "final", device)
    cases = find_input_cases(list(inputs), model.num_channels)
    if not cases:
        raise VolsegError(inputs[0] if inputs else None, "no cases found to fit the shift check's reference on")
    measured = _MeasuredCases(model, cases)
    inf = model.config["inference"]
    refs = fit_feature_references([n.eval() for n in model.networks], measured, model.config["patch_size"],
                                  inf["step_fraction"], seed=seed, device=device)
    for fold, ref in zip(model.folds, refs):
        if ref is None:
            raise VolsegError(model_dir, f"fold {fold}: no feature reference could be fitted (a network without a "
                              "decoder, or fewer than 2 tiles in the given cases)")
    written = [ref.save(fold_dir(model_dir, fold) / FEATURES_FILE) for fold, ref in zip(model.folds, refs)]
    path = write_json(Path(model_dir) / FILE_NAME,
                      {"format": FORMAT, "version": 1, "inputs": [str(Path(p).resolve()) for p in inputs],
                       "cases": dict(sorted(measured.statistics.items()))})
    return FittedReference(written, path, len(measured.statistics))


def read_record(path: Path, fmt: str, what: str, field: str) -> dict | None:
    """The JSON object at ``path`` whose ``format`` is ``fmt`` and whose ``field`` is an
    object, or None when there is no file.

    Raises:
        ModelError: Invalid JSON, another format (``what`` names the expected one, e.g. "a
            volseg shift calibration"), or no ``field`` object.
    """
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelError(path, f"invalid JSON at line {e.lineno}: {e.msg}") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise ModelError(path, f"not {what} (format {data.get('format') if isinstance(data, dict) else None!r})")
    if not isinstance(data.get(field), Mapping):
        raise ModelError(path, f"has no {field!r} object")
    return data


def load_fingerprint_statistics(model_dir: str | os.PathLike) -> FingerprintReference | None:
    """The reference of ``MODEL/shift_fingerprint.json`` (every fold's), or None without it.

    Raises:
        ModelError: The file is not such a record, or a case's statistics are not numbers
            by name.
    """
    path = Path(model_dir) / FILE_NAME
    data = read_record(path, FORMAT, "a volseg shift fingerprint record", "cases")
    if data is None:
        return None
    if not data["cases"]:
        raise ModelError(path, "holds no cases")
    for case_id, stats in data["cases"].items():
        if not isinstance(stats, Mapping) or not stats or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in stats.values()):
            raise ModelError(path, f"case {case_id!r}: expected its statistics as finite numbers by name")
    return FingerprintReference.from_statistics(list(data["cases"].values()))
