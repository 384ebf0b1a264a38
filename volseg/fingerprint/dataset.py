"""The dataset fingerprint: per-case measurements and their dataset-level summary."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from volseg import __version__
from volseg.errors import PlanError
from volseg.fingerprint.case import fingerprint_case
from volseg.fingerprint.image import intensity_stats
from volseg.io.atomic import write_json
from volseg.io.dataset import Dataset, load_dataset_json

log = logging.getLogger(__name__)

FINGERPRINT_FORMAT = "volseg-fingerprint"
FINGERPRINT_VERSION = 1


def _one(args: tuple) -> tuple[dict, np.ndarray]:
    case, dataset, seed = args
    return fingerprint_case(case, dataset, seed)


def compute_fingerprint(dataset: Dataset, num_workers: int = 2, seed: int = 0, progress: bool = True) -> dict:
    """Measure every training case of ``dataset`` (in parallel) and summarize.

    Args:
        dataset: A parsed dataset folder.
        num_workers: Processes; 0 or 1 measures in this process.
        seed: Seed of the foreground voxel sampling.
        progress: Show a progress bar on stderr.

    Returns:
        The fingerprint as a JSON-ready dict: ``cases`` (one record per case, see
        :func:`volseg.fingerprint.case.fingerprint_case`) and dataset-level summaries
        (``median_spacing``, ``median_shape_after_crop`` (z, y, x), pooled foreground
        ``intensity`` per channel, ``class_voxels``, ``objects`` sizes in mm).

    Raises:
        DatasetError: The first invalid case, naming its file.
    """
    from volseg.parallel import map_in_processes

    jobs = [(case, dataset, seed + i) for i, case in enumerate(dataset.cases)]
    results = map_in_processes(_one, jobs, num_workers, "fingerprint", "case", progress)
    return summarize(dataset, [r for r, _ in results], [s for _, s in results])


def summarize(dataset: Dataset, records: list[dict], samples: list[np.ndarray]) -> dict:
    """Dataset-level summary of per-case ``records`` and pooled intensity ``samples``."""
    spacings = np.array([r["spacing"] for r in records], dtype=float)
    shapes = np.array([r["shape_after_crop"] for r in records], dtype=float)
    pooled = np.concatenate(samples, axis=1) if samples else np.zeros((dataset.num_channels, 0), np.float32)
    class_voxels: dict[str, int] = {}
    objects: dict[str, list[float]] = {}
    for r in records:
        for k, n in r.get("class_voxels", {}).items():
            class_voxels[k] = class_voxels.get(k, 0) + n
        for obj in r.get("objects", []):
            objects.setdefault(str(obj["class"]), []).append(obj["diameter_mm"])
    return {
        "format": FINGERPRINT_FORMAT,
        "version": FINGERPRINT_VERSION,
        "volseg_version": __version__,
        "dataset": {"name": dataset.name, "root": str(dataset.root), "task": dataset.task,
                    "channel_names": {str(k): v for k, v in dataset.channel_names.items()},
                    "labels": {k: list(v) if isinstance(v, tuple) else v for k, v in dataset.labels.items()},
                    "timepoints": None if dataset.timepoints is None else {str(k): v for k, v in dataset.timepoints.items()},
                    "instance_labels": dataset.instance_labels, "file_ending": dataset.file_ending,
                    "num_cases": len(records)},
        "median_spacing": np.median(spacings, axis=0).tolist(),
        "spacing_percentiles": {"p10": np.percentile(spacings, 10, axis=0).tolist(),
                                "p90": np.percentile(spacings, 90, axis=0).tolist()},
        "median_shape_after_crop": np.median(shapes, axis=0).tolist(),
        "median_fraction_kept_by_crop": float(np.median([r["fraction_kept_by_crop"] for r in records])),
        "intensity": [intensity_stats(pooled[c]) for c in range(pooled.shape[0])],
        "class_voxels": dict(sorted(class_voxels.items(), key=lambda kv: int(kv[0]))),
        "objects": {k: {"count": len(v), "diameter_mm_p05": float(np.percentile(v, 5)),
                        "diameter_mm_median": float(np.median(v)), "diameter_mm_p95": float(np.percentile(v, 95))}
                    for k, v in sorted(objects.items())},
        "cases": records,
    }


def write_fingerprint(fingerprint: dict, path: str | os.PathLike) -> Path:
    """Write ``fingerprint`` to ``path`` atomically."""
    return write_json(path, fingerprint)


def load_fingerprint(path: str | os.PathLike) -> dict:
    """Read a fingerprint written by :func:`write_fingerprint`, checking its format."""
    data = load_dataset_json(path)
    if data.get("format") != FINGERPRINT_FORMAT:
        raise PlanError(path, f'not a volseg fingerprint (format {data.get("format")!r})')
    if data.get("version") != FINGERPRINT_VERSION:
        raise PlanError(path, f"fingerprint version {data.get('version')} is not supported "
                        f"(expected {FINGERPRINT_VERSION}); re-run volseg plan")
    return data
