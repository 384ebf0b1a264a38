"""One uncertainty score per case, from the maps the sliding window kept.

Per case, over the voxels the prediction calls foreground (labels > 0; over every voxel when
there are none): the mean predictive entropy, and, when the ensemble terms were computed, the
mean expected entropy (aleatoric) and mutual information (epistemic, across folds and TTA
mirrors), all in nats. ``predict --save-uncertainty`` writes them to ``summary.json``.
"""

from __future__ import annotations

import numpy as np

from volseg.tasks.base import CasePrediction

MAPS = ("expected_entropy", "mutual_information")


def case_uncertainty(prediction: CasePrediction) -> dict[str, float] | None:
    """``{"region", "voxels", "entropy", "expected_entropy", "mutual_information"}`` of one case,
    or None when no uncertainty map was computed."""
    if prediction.entropy is None:
        return None
    labels = prediction.labels
    inside = labels > 0 if labels is not None and labels.any() else None
    region = "foreground" if inside is not None else "image"

    def mean(a: np.ndarray) -> float:
        return float(a[inside].astype(np.float64).mean() if inside is not None else a.astype(np.float64).mean())

    out = {"region": region, "voxels": int(inside.sum()) if inside is not None else int(prediction.entropy.size),
           "entropy": round(mean(prediction.entropy), 6)}
    for name in MAPS:
        if prediction.maps.get(name) is not None:
            out[name] = round(mean(prediction.maps[name]), 6)
    return out
