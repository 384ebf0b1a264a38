"""DetectionTargets: semantic targets and tight boxes from augmented instance maps."""

import pickle

import numpy as np
import pytest
from scipy import ndimage

from volseg.data.augmentation import DeepSupervisionTargets
from volseg.detection.boxes import boxes_from_instances, flip_boxes
from volseg.detection.targets import IGNORE_LABEL, DetectionTargets, instance_targets


def hand_batch():
    seg = np.zeros((2, 1, 6, 8, 8), np.int16)
    seg[0, 0, 1:3, 2:5, 1:4] = 4        # class 0
    seg[0, 0, 4, 6, 5:8] = 2            # class 1
    seg[0, 0, 0, 0, 0] = 7              # ignore region
    seg[1, 0, 2:6, 0:2, 6:8] = 1        # class 1; sample 1's id 3 was cropped away
    classes = [{4: 0, 2: 1}, {"1": 1, "3": 0}]   # str keys, as read from JSON
    return seg, classes, [[7], []]


def test_hand_drawn_maps():
    seg, classes, ignore = hand_batch()
    out = DetectionTargets()(seg=seg.copy(), instance_classes=classes, ignore_ids=ignore, keys=["a", "b"])
    assert "seg" not in out and out["keys"] == ["a", "b"]
    target = out["target"]
    assert target.dtype == np.int16 and target.shape == seg.shape
    assert target[0, 0, 1, 2, 1] == 1 and target[0, 0, 4, 6, 7] == 2 and target[0, 0, 0, 0, 0] == IGNORE_LABEL == -1
    assert target[1, 0, 3, 1, 7] == 2 and target[0, 0, 5, 0, 0] == 0
    assert set(np.unique(target[0])) == {-1, 0, 1, 2}
    assert out["boxes"][0].tolist() == [[4, 6, 5, 5, 7, 8], [1, 2, 1, 3, 5, 4]]          # ids 2, 4 ascending
    assert out["box_classes"][0].tolist() == [1, 0]
    assert out["ignore_boxes"][0].tolist() == [[0, 0, 0, 1, 1, 1]]
    assert out["boxes"][1].tolist() == [[2, 0, 6, 6, 2, 8]] and out["box_classes"][1].tolist() == [1]
    assert out["ignore_boxes"][1].shape == (0, 6)
    assert out["boxes"][0].dtype == np.float32 and out["box_classes"][0].dtype == np.int64
    assert out["ignore_boxes"][0].dtype == np.float32


def test_empty_patch():
    out = DetectionTargets()(seg=np.zeros((1, 1, 3, 3, 3), np.int16), instance_classes=[{5: 0}])
    assert out["boxes"][0].shape == (0, 6) and out["box_classes"][0].shape == (0,)
    assert out["ignore_boxes"][0].shape == (0, 6) and not out["target"].any()


def test_boxes_stay_tight_after_rotation():
    m = np.zeros((5, 40, 40), np.int16)
    m[1:4, 18:22, 5:35] = 1              # a bar along x
    m[2, 5:9, 5:9] = 2
    rotated = ndimage.rotate(m, 30, axes=(1, 2), reshape=False, order=0)
    out = DetectionTargets()(seg=rotated[None, None], instance_classes=[{1: 0, 2: 0}])
    expected = boxes_from_instances(rotated)
    assert out["boxes"][0].tolist() == expected.tolist()
    bar = out["boxes"][0][0].astype(int)
    assert bar[4] - bar[1] > 10          # the rotated bar's box grew along y: the original was 4 voxels
    for axis in range(3):                # tight: every face of the box touches the instance
        along = np.moveaxis(rotated == 1, axis, 0)
        assert along[bar[axis]].any() and along[bar[axis + 3] - 1].any()
        assert not along[:bar[axis]].any() and not along[bar[axis + 3]:].any()


def test_boxes_follow_a_mirrored_map():
    seg, classes, ignore = hand_batch()
    plain = DetectionTargets()(seg=seg.copy(), instance_classes=classes, ignore_ids=ignore)
    flipped = DetectionTargets()(seg=np.flip(seg, axis=(2, 4)).copy(), instance_classes=classes, ignore_ids=ignore)
    for a, b in zip(plain["boxes"], flipped["boxes"]):
        np.testing.assert_array_equal(flip_boxes(a, [0, 2], seg.shape[2:]), b)


def test_deep_supervision_targets():
    seg, classes, ignore = hand_batch()
    scales = [[1, 1, 1], [0.5, 0.5, 0.5], [0.5, 0.25, 0.25]]
    full = DetectionTargets()(seg=seg.copy(), instance_classes=classes, ignore_ids=ignore)["target"]
    out = DetectionTargets(scales)(seg=seg.copy(), instance_classes=classes, ignore_ids=ignore)["target"]
    assert [t.shape for t in out] == [(2, 1, 6, 8, 8), (2, 1, 3, 4, 4), (2, 1, 3, 2, 2)]
    for t, s in zip(out, scales):
        np.testing.assert_array_equal(t, DeepSupervisionTargets.downsample(full, s))
        assert t.dtype == np.int16


def test_custom_ignore_label_and_pickling():
    seg, classes, ignore = hand_batch()
    transform = pickle.loads(pickle.dumps(DetectionTargets(ignore_label=255)))
    out = transform(seg=seg.copy(), instance_classes=classes, ignore_ids=ignore)
    assert out["target"][0, 0, 0, 0, 0] == 255


def test_bad_inputs_raise():
    seg, classes, ignore = hand_batch()
    with pytest.raises(ValueError, match=r"ids \[7\] have no class"):
        DetectionTargets()(seg=seg.copy(), instance_classes=classes)
    with pytest.raises(ValueError, match="both in instance_classes and ignore_ids"):
        DetectionTargets()(seg=seg.copy(), instance_classes=classes, ignore_ids=[[4, 7], []])
    with pytest.raises(ValueError, match="one {id: class} mapping per sample"):
        DetectionTargets()(seg=seg.copy(), instance_classes=classes[:1], ignore_ids=ignore)
    with pytest.raises(ValueError, match="one {id: class} mapping per sample"):
        DetectionTargets()(seg=seg.copy())
    with pytest.raises(ValueError, match="one id list per sample"):
        DetectionTargets()(seg=seg.copy(), instance_classes=classes, ignore_ids=[[7]])
    with pytest.raises(ValueError, match=r"\(b, 1, z, y, x\)"):
        DetectionTargets()(seg=seg[:, 0], instance_classes=classes)
    with pytest.raises(ValueError, match="must be >= 0"):
        instance_targets(-np.ones((2, 2, 2), np.int16), {})
    with pytest.raises(ValueError, match="class indices must be >= 0"):
        instance_targets(seg[0, 0], {4: -1, 2: 0}, [7])
    with pytest.raises(ValueError, match="int16"):
        DetectionTargets(ignore_label=40000)
