"""Dice, HD95, ASSD and surface Dice agree with MONAI's implementations.

MONAI extracts surfaces as ``mask ^ binary_erosion(mask)`` and measures Euclidean distances
between voxel centres scaled by the spacing; volseg uses the same convention, so values
agree up to MONAI's float32 arithmetic. They differ, by design, only for empty masks:
both empty → volseg NaN (MONAI Dice with ignore_empty=False: 1); one empty → volseg HD95
NaN (MONAI: inf or NaN, depending on the side).
"""

import warnings

import numpy as np
import pytest
import torch
from monai.metrics import (
    compute_average_surface_distance,
    compute_dice,
    compute_hausdorff_distance,
    compute_surface_dice,
)
from scipy.ndimage import binary_erosion, gaussian_filter

from volseg.evaluation import evaluate_case, surface_metrics
from volseg.evaluation import surface as surface_mod
from volseg.evaluation.surface import surface_voxels

SPACING = (2.5, 0.8, 0.7)


def _blobs(seed, shape=(24, 40, 48), sigma=2.5):
    rng = np.random.default_rng(seed)
    return gaussian_filter(rng.random(shape), sigma) > 0.5


def _onehot(mask):
    return torch.from_numpy(np.stack([~mask, mask])[None].astype(np.float32))


def _monai(pred, ref, spacing, tol):
    p, r = _onehot(pred), _onehot(ref)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "dice": float(compute_dice(p, r, include_background=False, ignore_empty=False)[0, 0]),
            "hd95_mm": float(compute_hausdorff_distance(p, r, percentile=95, spacing=spacing)[0, 0]),
            "assd_mm": float(compute_average_surface_distance(p, r, symmetric=True, spacing=spacing)[0, 0]),
            "surface_dice": float(compute_surface_dice(p, r, class_thresholds=[tol], spacing=spacing)[0, 0]),
        }


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("tol", [1.0, 2.0])
def test_random_masks_agree_with_monai(seed, tol):
    pred, ref = _blobs(seed), _blobs(seed + 100)
    ours = evaluate_case(pred.astype(np.uint8), ref.astype(np.uint8), SPACING, {"fg": 1}, tolerance_mm=tol)["fg"]
    theirs = _monai(pred, ref, SPACING, tol)
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, rel=1e-5, abs=1e-5), key


def test_shifted_organ_and_multilabel_agree_with_monai():
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in (30, 40, 44)], indexing="ij")
    ref = np.zeros((30, 40, 44), np.uint8)
    ref[((zz - 15) / 8) ** 2 + ((yy - 20) / 14) ** 2 + ((xx - 22) / 12) ** 2 <= 1] = 1
    ref[((zz - 12) / 3) ** 2 + ((yy - 18) / 4) ** 2 + ((xx - 20) / 4) ** 2 <= 1] = 2
    pred = np.roll(ref, (1, -2, 3), axis=(0, 1, 2))
    pred[2:4, 2:5, 2:5] = 2  # a spurious speck far away
    ours = evaluate_case(pred, ref, SPACING, {"organ": 1, "lesion": 2, "both": (1, 2)}, tolerance_mm=1.5)
    for name, values in (("organ", (1,)), ("lesion", (2,)), ("both", (1, 2))):
        theirs = _monai(np.isin(pred, values), np.isin(ref, values), SPACING, 1.5)
        for key, value in theirs.items():
            assert ours[name][key] == pytest.approx(value, rel=1e-5, abs=1e-5), (name, key)


def test_surface_matches_monai_erosion_convention_at_the_border():
    mask = _blobs(3, shape=(10, 12, 14), sigma=1.5)
    mask[0] = True  # touches the array border
    assert np.array_equal(surface_voxels(mask), mask ^ binary_erosion(mask))


def test_kdtree_and_distance_transform_paths_agree(monkeypatch):
    pred, ref = _blobs(4), _blobs(5)
    monkeypatch.setattr(surface_mod, "_KDTREE_RATIO", 10**9)
    edt = surface_metrics(pred, ref, SPACING, 1.0)
    monkeypatch.setattr(surface_mod, "_KDTREE_RATIO", 0)
    kd = surface_metrics(pred, ref, SPACING, 1.0)
    assert kd == pytest.approx(edt, rel=1e-12)


def test_empty_masks_documented_relation_to_monai():
    empty = np.zeros((8, 9, 10), bool)
    full = empty.copy()
    full[2:5, 3:6, 4:8] = True
    both = evaluate_case(empty.astype(np.uint8), empty.astype(np.uint8), SPACING, {"fg": 1})["fg"]
    assert np.isnan(both["dice"]) and np.isnan(both["surface_dice"]) and np.isnan(both["hd95_mm"])
    assert _monai(empty, empty, SPACING, 1.0)["dice"] == 1.0  # MONAI scores this 1; volseg leaves it out
    for pred, ref in ((full, empty), (empty, full)):
        ours = evaluate_case(pred.astype(np.uint8), ref.astype(np.uint8), SPACING, {"fg": 1})["fg"]
        theirs = _monai(pred, ref, SPACING, 1.0)
        assert ours["dice"] == theirs["dice"] == 0.0
        assert ours["surface_dice"] == 0.0 and theirs["surface_dice"] == 0.0
        assert np.isnan(ours["hd95_mm"]) and not np.isfinite(theirs["hd95_mm"])
