"""Fingerprint statistics of one image, and how far a case's fall from the training cases'.

The same measurements are taken on a training case (from its fingerprint record, with the
reference label as foreground) and on a case being predicted (with the predicted labels as
foreground): voxel spacing and image shape, and per channel the intensity percentiles and
spread of the image (its non-zero region) and of the foreground, the voxel noise, and the intensity
centroid (orientation). :class:`FingerprintReference` holds the
training cases' range, median and robust scale of each statistic; its
:meth:`~FingerprintReference.deviation` is the case's largest robust z-score (its shift score)
and the statistics outside the training range, by how much.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from volseg.fingerprint.image import FOREGROUND_SAMPLES, image_measurements, intensity_stats, sample_voxels

AXES = ("z", "y", "x")
IMAGE_STATS = {"p00_5": "0.5th percentile", "p50": "median", "p99_5": "99.5th percentile", "std": "std"}
FOREGROUND_STATS = {"p50": "median", "p99_5": "99.5th percentile"}


def flat_statistics(record: Mapping) -> dict[str, float]:
    """The compared statistics of a measured case, by name ("spacing z", "channel 0 image p50", ...).

    Args:
        record: ``spacing`` and ``shape`` (z, y, x; mm and voxels), the per-channel
            :func:`~volseg.fingerprint.image.image_measurements` (``image_intensity``,
            ``centroid``, ``noise``), and optionally ``intensity``, the per-channel foreground
            :func:`~volseg.fingerprint.image.intensity_stats` (None: no foreground).
    """
    out = {f"spacing {a}": float(s) for a, s in zip(AXES, record["spacing"])}
    out.update({f"shape {a}": float(n) for a, n in zip(AXES, record["shape"])})
    for c, st in enumerate(record["image_intensity"]):
        out.update({f"channel {c} image {k}": float(st[k]) for k in IMAGE_STATS})
    for c, sigma in enumerate(record.get("noise") or []):
        out[f"channel {c} noise"] = float(sigma)
    for c, row in enumerate(record.get("centroid") or []):
        out.update({f"channel {c} centroid {a}": float(v) for a, v in zip(AXES, row)})
    for c, st in enumerate(record.get("intensity") or []):
        if st.get("n", 1):
            out.update({f"channel {c} foreground {k}": float(st[k]) for k in FOREGROUND_STATS})
    return out


def case_statistics(images: np.ndarray, spacing: Sequence[float], foreground: np.ndarray | None,
                    seed: int = 0) -> dict[str, float]:
    """:func:`flat_statistics` of a (C, Z, Y, X) image with ``spacing`` (z, y, x, mm) and a
    (Z, Y, X) bool ``foreground`` mask (None or empty: no foreground statistics)."""
    fg = None
    if foreground is not None and foreground.any():
        values = sample_voxels(images, foreground, FOREGROUND_SAMPLES, seed)
        fg = [intensity_stats(values[c]) for c in range(values.shape[0])]
    return flat_statistics({"spacing": spacing, "shape": images.shape[1:], "intensity": fg,
                            **image_measurements(images, seed)})


def record_statistics(record: Mapping) -> dict[str, float] | None:
    """:func:`flat_statistics` of a fingerprint case record; None for records made before the
    fingerprint measured whole images (re-run ``volseg plan``)."""
    if "image_intensity" not in record:
        return None
    labelled = any(k != "0" and n > 0 for k, n in record.get("class_voxels", {}).items())
    return flat_statistics({**record, "intensity": record.get("intensity") if labelled else None})


def describe(name: str) -> str:
    """Readable name of a statistic: "channel 0 image p50" → "channel 0 median"."""
    parts = name.split()
    if parts[0] != "channel":
        return name
    if parts[2] == "noise":
        return f"channel {parts[1]} noise σ"
    if parts[2] == "centroid":
        return f"channel {parts[1]} intensity centroid {parts[3]} (fraction of the head's extent)"
    words = IMAGE_STATS if parts[2] == "image" else FOREGROUND_STATS
    region = "" if parts[2] == "image" else " foreground"
    return f"channel {parts[1]}{region} {words[parts[3]]}"


@dataclass(frozen=True)
class FingerprintReference:
    """Per statistic the training cases' ``low``/``high`` (range), ``median`` and ``scale``.

    The scale is 1.4826 × the median absolute deviation, but at least a floor that keeps a
    statistic that never varied in training from turning a negligible difference into a
    huge z: 1% of the channel's median intensity for intensity statistics, 0.005 for
    centroids (fractions of the extent), 1% of the median for noise, spacing and shape.
    """

    low: dict[str, float]
    high: dict[str, float]
    median: dict[str, float]
    scale: dict[str, float]
    cases: int

    @classmethod
    def from_statistics(cls, cases: Sequence[Mapping[str, float]]) -> "FingerprintReference":
        """The reference of training cases' :func:`flat_statistics` (the statistics that at least
        half of the cases have, e.g. foreground ones only over cases with foreground)."""
        if not cases:
            raise ValueError("a fingerprint reference needs at least one case")
        names = sorted({k for c in cases for k in c}, key=lambda k: next(list(c).index(k) for c in cases if k in c))
        low, high, median, spread = {}, {}, {}, {}
        for k in names:
            v = np.array([c[k] for c in cases if k in c], dtype=np.float64)
            if 2 * v.size < len(cases):
                continue
            med = float(np.median(v))
            low[k], high[k], median[k] = float(v.min()), float(v.max()), med
            spread[k] = 1.4826 * float(np.median(np.abs(v - med)))
        scale = {k: max(spread[k], _floor(k, median), 1e-6) for k in median}
        return cls(low, high, median, scale, len(cases))

    def deviation(self, stats: Mapping[str, float]) -> tuple[float, list[dict]]:
        """``(score, outside)`` of a case's :func:`flat_statistics`.

        ``score`` is the largest ``|value − median| / scale`` over the statistics both have
        (0 when none). ``outside`` lists the statistics beyond the training range by more than
        half a scale, largest z first: ``{"statistic", "value", "training": [low, high], "z"}``.
        """
        score, outside = 0.0, []
        for k, med in self.median.items():
            if k not in stats:
                continue
            x = float(stats[k])
            z = abs(x - med) / self.scale[k]
            score = max(score, z)
            margin = 0.5 * self.scale[k]
            if x > self.high[k] + margin or x < self.low[k] - margin:
                outside.append({"statistic": k, "value": x, "training": [self.low[k], self.high[k]],
                                "z": round(z, 2)})
        outside.sort(key=lambda o: -o["z"])
        return float(score), outside


def _floor(name: str, median: Mapping[str, float]) -> float:
    """The smallest scale of statistic ``name`` (see :class:`FingerprintReference`)."""
    parts = name.split()
    if parts[0] != "channel":
        return 0.01 * abs(median[name])
    if parts[2] == "centroid":
        return 0.005
    if parts[2] == "noise":
        return 0.01 * abs(median[name])
    return 0.01 * abs(median.get(f"channel {parts[1]} image p50", median[name]))


def format_outside(item: Mapping) -> str:
    """One statistic outside the training range, e.g. "spacing z 5 mm, training 1–2.5 mm"."""
    name = item["statistic"]
    unit = " mm" if name.startswith("spacing") else ""
    lo, hi = item["training"]
    return f"{describe(name)} {_num(item['value'])}{unit}, training {_num(lo)}–{_num(hi)}{unit}"


def _num(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"
