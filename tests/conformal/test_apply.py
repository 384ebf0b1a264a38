"""What predict --calibrated makes of a record: label maps, per-class sets, warnings; edge rules."""

import numpy as np
import pytest

from volseg.conformal.calibrate import choose_method, settings_warning
from volseg.conformal.risks import get_risk, lesion_detection_scores, reference_lesions
from volseg.errors import VolsegError
from volseg.tasks.base import CasePrediction
from volseg.tasks.segmentation import SegmentationTask


def _task(labels=None):
    labels = labels or {"background": 0, "edema": 1, "core": 2}
    values = sorted(labels.values())
    return SegmentationTask({"outputs": {"mode": "softmax", "num_outputs": max(values) + 1, "class_values": values},
                             "dataset": {"labels": labels, "channel_names": {"0": "MR"}}})


def _probs():
    p = np.zeros((3, 2, 2, 2), np.float32)
    p[0], p[1], p[2] = 0.5, 0.3, 0.2  # fg 0.5: edema most probable
    p[:, 0, 0, 0] = [0.2, 0.35, 0.45]  # core most probable, both classes above low thresholds
    return p.astype(np.float16)


def test_single_threshold_takes_the_most_probable_foreground_class():
    task = _task()
    pred = CasePrediction(labels=np.zeros((2, 2, 2), np.uint8), probabilities=_probs())
    out = task.apply_conformal(pred, {"thresholds": {"all": 0.45}, "by": None}, {}, (1, 1, 1))
    assert out.labels[0, 0, 0] == 2 and (out.labels.ravel()[1:] == 1).all()
    assert out.maps["possible"].sum() == 8  # the plain prediction was empty


def test_per_class_sets_are_written_and_a_missing_class_is_an_error():
    task = _task()
    pred = CasePrediction(labels=np.zeros((2, 2, 2), np.uint8), probabilities=_probs())
    out = task.apply_conformal(pred, {"thresholds": {"edema": 0.25, "core": 0.4}, "by": "class"}, {}, (1, 1, 1))
    assert out.maps["set_edema"].sum() == 8 and out.maps["set_core"].sum() == 1
    assert out.labels[0, 0, 0] == 2  # in both sets: the more probable class
    pred = CasePrediction(labels=np.zeros((2, 2, 2), np.uint8), probabilities=_probs())
    with pytest.raises(VolsegError, match="no threshold for core"):
        task.apply_conformal(pred, {"thresholds": {"edema": 0.25}, "by": "class"}, {}, (1, 1, 1))


def test_non_contiguous_label_values_are_named_by_channel():
    task = _task({"background": 0, "lesion": 2})
    assert task.output_names() == ["background", "label_1", "lesion"]
    targets = task.conformal_targets(np.zeros((3, 2, 2, 2), np.float16), by_class=True)
    assert list(targets) == ["lesion"] and targets["lesion"][1] == (2,)


def test_coverage_rule_is_exact_despite_float_rounding():
    ref = np.zeros((1, 1, 90), bool)
    ref[:] = True
    score = np.zeros(ref.shape, np.float32)
    score[0, 0, :63] = 0.9  # 63 / 90 = 0.7 is not more than 0.7
    score[0, 0, 63] = 0.6
    labels, n, _ = reference_lesions(ref, (1, 1, 1))
    assert lesion_detection_scores(score, labels, n, coverage=0.7)[0] == pytest.approx(0.6)


def test_method_choice_errors():
    with pytest.raises(VolsegError, match="takes no delta"):
        choose_method(get_risk("lesion_fnr"), 0.1, "crc")
    with pytest.raises(VolsegError, match="needs --delta"):
        choose_method(get_risk("lesion_fnr"), None, "ltt")
    assert choose_method(get_risk("lesion_fnr"), 0.1, None) == "ltt"


def test_settings_warning_when_an_ensemble_predicts_single_fold_calibration():
    cal = {"sources": [{"folds": ["0"], "tta": True, "configuration": "3d_cpu"},
                       {"folds": ["1"], "tta": True, "configuration": "3d_cpu"}]}
    assert settings_warning(cal, ["0"], True, "3d_cpu") is None
    assert "fold(s) 0+1" in settings_warning(cal, ["0", "1"], True, "3d_cpu")
    assert settings_warning(cal, ["0"], False, "3d_cpu") is not None
    assert settings_warning({"sources": [{}]}, ["0", "1"], True, "3d_cpu") is None
