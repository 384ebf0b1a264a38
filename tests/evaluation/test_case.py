"""evaluate_case: the array-level API."""

import numpy as np
import pytest

from volseg.errors import VolsegError
from volseg.evaluation import METRICS, LesionConfig, evaluate_case
from volseg.evaluation.labels import labels_from_values, normalize_labels, parse_region

SPACING = (2.0, 0.9, 0.8)


def _ref():
    ref = np.zeros((12, 16, 18), np.uint8)
    ref[2:8, 3:11, 4:12] = 1
    ref[4:6, 5:8, 6:9] = 2
    return ref


def test_identical_maps_score_perfectly_with_volumes_in_mm3():
    ref = _ref()
    out = evaluate_case(ref, ref, SPACING, {"organ": 1, "tumour": 2})
    assert set(out) == {"organ", "tumour"}
    for name, n in (("organ", int((ref == 1).sum())), ("tumour", 18)):
        m = out[name]
        assert set(METRICS) <= set(m)
        assert m["dice"] == m["iou"] == m["surface_dice"] == 1.0 and m["hd95_mm"] == m["assd_mm"] == 0.0
        assert m["volume_ref_mm3"] == m["volume_pred_mm3"] == pytest.approx(n * 2.0 * 0.9 * 0.8)
        assert m["volume_diff_mm3"] == 0.0 and not m["ref_empty"] and not m["pred_empty"]


def test_region_is_the_union_and_background_is_skipped():
    ref = _ref()
    pred = ref.copy()
    pred[pred == 2] = 1  # tumour predicted as organ: the region "all" is still perfect
    out = evaluate_case(pred, ref, SPACING, {"background": 0, "tumour": 2, "all": (1, 2)})
    assert set(out) == {"tumour", "all"}
    assert out["all"]["dice"] == 1.0
    assert out["tumour"]["dice"] == 0.0 and out["tumour"]["pred_empty"]
    assert np.isnan(out["tumour"]["hd95_mm"]) and out["tumour"]["surface_dice"] == 0.0
    assert out["tumour"]["volume_diff_mm3"] == pytest.approx(-18 * 2.0 * 0.9 * 0.8)


def test_cropping_to_the_foreground_changes_nothing_at_the_array_border():
    ref = _ref()
    ref[0:3, 0:2, :] = 1  # touches three borders
    pred = np.roll(ref, 1, axis=2)
    small = evaluate_case(pred, ref, SPACING, {"a": 1})["a"]
    padded = evaluate_case(np.pad(pred, 5), np.pad(ref, 5), SPACING, {"a": 1})["a"]
    # padding moves the array border away, so surfaces at the border differ: only overlap is equal
    assert small["dice"] == padded["dice"]
    big = np.zeros((30, 30, 30), np.uint8)
    big[5:17, 5:21, 5:23] = ref
    big_pred = np.zeros_like(big)
    big_pred[5:17, 5:21, 5:23] = pred
    inner = evaluate_case(big_pred, big, SPACING, {"a": 1})["a"]
    assert inner == pytest.approx(padded)


def test_both_empty_is_nan_and_flagged():
    z = np.zeros((5, 6, 7), np.uint8)
    m = evaluate_case(z, z, SPACING, {"a": 1}, lesion_cfg=LesionConfig())["a"]
    assert m["ref_empty"] and m["pred_empty"]
    assert all(np.isnan(m[k]) for k in ("dice", "iou", "surface_dice", "hd95_mm", "assd_mm"))
    assert m["volume_diff_mm3"] == 0.0 and m["lesions"]["n_ref"] == 0


def test_lesion_metrics_are_added_on_request():
    ref = _ref()
    out = evaluate_case(ref, ref, SPACING, {"tumour": 2}, lesion_cfg=LesionConfig(min_volume_mm3=0.0))
    assert out["tumour"]["lesions"]["tp_ref"] == 1
    assert "lesions" not in evaluate_case(ref, ref, SPACING, {"tumour": 2})["tumour"]


@pytest.mark.parametrize("pred_shape,spacing,match", [
    ((12, 16, 17), SPACING, "same shape"),
    ((12, 16, 18), (1.0, 1.0), "spacing"),
    ((12, 16, 18), (1.0, 0.0, 1.0), "spacing"),
])
def test_bad_arrays(pred_shape, spacing, match):
    with pytest.raises(ValueError, match=match):
        evaluate_case(np.zeros(pred_shape, np.uint8), _ref(), spacing, {"a": 1})


def test_label_specs():
    assert parse_region("followup=2,1") == ("followup", (1, 2))
    assert normalize_labels({"bg": 0, "a": 1, "r": [2, 1]}) == {"a": 1, "r": (1, 2)}
    assert labels_from_values({0, 3, 1}, {"r": (1, 3)}) == {"1": 1, "3": 3, "r": (1, 3)}
    for bad in ("followup", "=1,2", "x=", "x=a,b", "x=0,1"):
        with pytest.raises(VolsegError, match="--regions"):
            parse_region(bad)
    with pytest.raises(ValueError, match="non-zero"):
        normalize_labels({"r": [0, 1]})
    with pytest.raises(ValueError, match="int or a list"):
        normalize_labels({"r": "1"})
