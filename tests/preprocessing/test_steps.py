import numpy as np
import pytest
import torch

from volseg.preprocessing.crop import bbox_of, crop, nonzero_mask
from volseg.preprocessing.normalize import normalize
from volseg.preprocessing.resample import resample_image, resample_label


def test_nonzero_crop_fills_holes_and_boxes():
    img = np.zeros((1, 10, 12, 14), np.float32)
    img[0, 2:8, 3:9, 4:10] = 5
    img[0, 4, 5, 6] = 0  # an enclosed hole stays inside the mask
    mask = nonzero_mask(img)
    assert mask[4, 5, 6]
    box = bbox_of(mask)
    assert box == [[2, 8], [3, 9], [4, 10]]
    assert crop(img, box).shape == (1, 6, 6, 6)


def test_empty_mask_keeps_whole_volume():
    assert bbox_of(np.zeros((3, 4, 5), bool)) == [[0, 3], [0, 4], [0, 5]]


def test_ct_normalization_clips_then_scales():
    img = np.array([[[[-2000.0, 0.0, 1000.0]]]], np.float32)
    out = normalize(img, [{"channel": 0, "scheme": "ct", "clip": [-1000.0, 500.0], "mean": 0.0, "std": 100.0}])
    np.testing.assert_allclose(out[0, 0, 0], [-10.0, 0.0, 5.0])
    assert img[0, 0, 0, 0] == -2000.0  # input untouched


def test_masked_zscore_uses_only_the_mask():
    rng = np.random.default_rng(0)
    img = np.zeros((1, 8, 8, 8), np.float32)
    mask = np.zeros((8, 8, 8), bool)
    mask[2:6, 2:6, 2:6] = True
    img[0][mask] = rng.normal(50, 5, mask.sum())
    out = normalize(img, [{"channel": 0, "scheme": "zscore", "use_nonzero_mask": True}], mask)
    assert abs(out[0][mask].mean()) < 1e-5 and abs(out[0][mask].std() - 1) < 1e-4
    assert (out[0][~mask] == 0).all()


def test_resample_image_shape_and_constant():
    img = np.full((2, 10, 20, 30), 3.0, np.float32)
    out = resample_image(img, (5, 40, 15))
    assert out.shape == (2, 5, 40, 15) and torch.allclose(out, torch.tensor(3.0))


def test_resample_label_keeps_values_and_roughly_volume():
    lab = np.zeros((20, 20, 20), np.int16)
    lab[5:15, 5:15, 5:15] = 2
    lab[8:12, 8:12, 8:12] = 3
    out = resample_label(lab, (30, 13, 20), [0, 2, 3]).numpy()
    assert set(np.unique(out)) == {0, 2, 3}
    # volume in physical units is preserved within a voxel layer
    vol_in = (lab > 0).sum()
    vol_out = (out > 0).sum() * (20 * 20 * 20) / (30 * 13 * 20)
    assert vol_out == pytest.approx(vol_in, rel=0.15)


def test_resample_label_nearest_keeps_instance_ids():
    lab = np.zeros((10, 10, 10), np.int16)
    lab[1:4, 1:4, 1:4] = 7
    lab[6:9, 6:9, 6:9] = 12
    out = resample_label(lab, (20, 20, 20), [], "nearest").numpy()
    assert set(np.unique(out)) == {0, 7, 12}
