import copy
import json

import numpy as np
import pytest
import torch

from volseg.data.augmentation import (
    DeepSupervisionTargets,
    build_transforms,
    default_augmentation,
    no_intensity_augmentation,
    sample_size,
)
from volseg.data.sampling import PatchSampler, Window
from volseg.data.spatial import WindowSpatialTransform

PATCH = [16, 16, 16]


def _off(params: dict) -> dict:
    """Every probability zero and no mirroring: the identity."""
    p = no_intensity_augmentation(params)
    for key in ("rotation", "scaling", "elastic"):
        p[key]["p"] = 0.0
    p["mirror_axes"] = []
    return p


def test_default_is_json_and_isotropic():
    params = default_augmentation(PATCH, [1.0, 1.0, 1.0])
    assert json.loads(json.dumps(params)) == params
    assert params["dummy_2d_axis"] is None
    assert params["rotation"]["degrees"] == [[-30.0, 30.0]] * 3
    assert params["scaling"]["range"] == [0.7, 1.4] and params["elastic"]["p"] == 0.0
    assert params["mirror_axes"] == [0, 1, 2]
    assert {params[k]["p"] for k in ("gaussian_noise", "gaussian_blur", "brightness", "contrast",
                                      "low_resolution")} == {0.1, 0.2, 0.15, 0.25}


def test_anisotropic_spacing_rotates_in_plane_only():
    params = default_augmentation([20, 64, 64], [4.0, 0.7, 0.7], mirror_axes=(1, 2))
    assert params["dummy_2d_axis"] == 0
    assert params["rotation"]["degrees"] == [[-180.0, 180.0], [0.0, 0.0], [0.0, 0.0]]
    assert params["mirror_axes"] == [1, 2]
    assert default_augmentation([16, 64, 64], [1.0, 1.0, 4.5])["dummy_2d_axis"] == 2
    assert default_augmentation([12, 64, 64], [1.0, 1.0, 1.0])["dummy_2d_axis"] == 0  # flat patch


def test_default_rejects_bad_input():
    with pytest.raises(ValueError, match="3D"):
        default_augmentation([64, 64], [1.0, 1.0])
    with pytest.raises(ValueError, match="mirror_axes"):
        default_augmentation(PATCH, [1.0] * 3, mirror_axes=(3,))


def test_sample_size_covers_rotation_and_zoom():
    params = default_augmentation([32, 32, 32], [1.0] * 3)
    assert sample_size([32, 32, 32], None) == [32, 32, 32]
    size = np.array(sample_size([32, 32, 32], params))
    assert np.all((size - 32) % 2 == 0)
    # a 30° turn about one axis alone needs 31·(cos 30° + sin 30°)·1.4 + 1 ≈ 60.3 voxels
    assert np.all(size >= 61)
    params["rotation"]["p"] = params["scaling"]["p"] = 0.0
    assert sample_size([32, 32, 32], params) == [32, 32, 32]


def test_sample_size_dummy_2d_keeps_coarse_axis():
    params = default_augmentation([8, 40, 40], [5.0, 1.0, 1.0])
    size = sample_size([8, 40, 40], params)
    assert size[0] == 8
    assert size[1] >= 39 * np.sqrt(2) * 1.4  # a 45° turn of the square, zoomed out 1.4×


def test_identity_parameters_return_the_patch(cases):
    sampler = PatchSampler(cases, PATCH, 2, sample_size(PATCH, None), seed=0)
    batch = sampler.sample_windows()
    raw = [w.read(w.lower, np.asarray(w.lower) + PATCH) for w in batch["windows"]]
    out = build_transforms(_off(default_augmentation(PATCH, [1.0] * 3)), PATCH)(**batch)
    for i, (image, seg) in enumerate(raw):
        np.testing.assert_array_equal(out["data"][i].numpy(), image)
        np.testing.assert_array_equal(out["target"][i].numpy(), seg)


def test_validation_transform_is_a_plain_read_from_eager_windows(cases):
    sampler = PatchSampler(cases, PATCH, 3, sample_size=(24, 20, 16), seed=2)
    batch = sampler.sample()
    expect = batch["data"][:, :, 4:20, 2:18, :].copy()
    out = build_transforms(default_augmentation(PATCH, [1.0] * 3), PATCH, None, is_training=False)(**batch)
    assert out["data"].dtype == torch.float32 and out["target"].dtype == torch.int16
    np.testing.assert_array_equal(out["data"].numpy(), expect)


@pytest.mark.parametrize("spacing", [[1.0, 1.0, 1.0], [4.0, 1.0, 1.0]])
def test_channels_share_the_spatial_transform(cases, spacing):
    params = no_intensity_augmentation(default_augmentation(PATCH, spacing))
    for key in ("rotation", "scaling"):
        params[key]["p"] = 1.0
    params["elastic"] = {"p": 1.0, "alpha": [50.0, 100.0], "sigma": [6.0, 8.0]}
    transform = build_transforms(params, PATCH, [[1, 1, 1]])
    sampler = PatchSampler(cases, PATCH, 4, seed=0)
    np.random.seed(0)
    batch = sampler.sample_windows()
    raw = np.stack([w.read(w.lower, np.asarray(w.lower) + PATCH)[0] for w in batch["windows"]])
    out = transform(**batch)["data"].numpy()
    assert out.shape == (4, 2, *PATCH)
    np.testing.assert_array_equal(out[:, 0], out[:, 1])  # channel 1 was a copy of channel 0
    assert not np.allclose(out, raw, atol=1e-3)  # and the transform did something


@pytest.mark.parametrize("degrees, k", [(90.0, 1), (-90.0, -1)])
def test_dummy_2d_quarter_turn_is_rot90(cases, degrees, k):
    """A +90° turn about axis 0 is ``np.rot90(k=1)`` in the (y, x) plane, -90° is ``k=-1``."""
    params = _off(default_augmentation([8, 16, 16], [5.0, 1.0, 1.0]))
    params["rotation"] = {"p": 1.0, "degrees": [[degrees, degrees], [0.0, 0.0], [0.0, 0.0]]}
    window = Window(cases[0].image(), cases[0].seg(), np.array([8, 5, 6]), np.array([8, 16, 16]))
    image, seg = WindowSpatialTransform([8, 16, 16], params).transform_window(window)
    raw_i, raw_s = window.read(window.lower, window.lower + [8, 16, 16])
    assert not np.allclose(raw_i, np.rot90(raw_i, 2, axes=(2, 3)), atol=1e-3)  # the two turns differ
    np.testing.assert_allclose(image, np.rot90(raw_i, k, axes=(2, 3)), atol=1e-3)
    np.testing.assert_array_equal(seg, np.rot90(raw_s, k, axes=(2, 3)))


def test_zoom_out_near_border_brings_zeros_not_garbage(cases):
    params = _off(default_augmentation(PATCH, [1.0] * 3))
    params["scaling"] = {"p": 1.0, "range": [1.4, 1.4], "independent_axes": False}
    window = Window(cases[0].image(), cases[0].seg(), np.array([0, 0, 0]), np.array(PATCH))
    image, seg = WindowSpatialTransform(PATCH, params).transform_window(window)
    assert np.all(np.abs(image[:, :2, :2, :2]) < 1e-3) and np.all(seg[:, :2, :2, :2] == 0)
    assert np.abs(image[:, 8:, 8:, 8:]).min() > 0


def test_deep_supervision_targets():
    seg = np.random.default_rng(0).integers(0, 3, (2, 1, 16, 24, 24)).astype(np.int16)
    scales = [[1, 1, 1], [1, 0.5, 0.5], [0.5, 0.25, 0.25]]
    out = DeepSupervisionTargets(scales)(seg=seg)["target"]
    assert [t.shape for t in out] == [(2, 1, 16, 24, 24), (2, 1, 16, 12, 12), (2, 1, 8, 6, 6)]
    np.testing.assert_array_equal(out[0], seg)
    np.testing.assert_array_equal(out[1], seg[:, :, :, 1::2, 1::2])
    np.testing.assert_array_equal(out[2], seg[:, :, 1::2, 2::4, 2::4])
    assert all(t.dtype == np.int16 for t in out)
    single = DeepSupervisionTargets(None)(seg=seg)["target"]
    assert isinstance(single, np.ndarray) and single.shape == seg.shape


def test_training_pipeline_shapes(cases):
    params = default_augmentation(PATCH, [1.0] * 3)
    for key in params:
        if isinstance(params[key], dict) and "p" in params[key] and key != "elastic":
            params[key]["p"] = 1.0
    scales = [[1, 1, 1], [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]]
    np.random.seed(1)
    out = build_transforms(params, PATCH, scales)(**PatchSampler(cases, PATCH, 2, seed=0).sample_windows())
    assert out["data"].shape == (2, 2, 16, 16, 16) and out["data"].dtype == torch.float32
    assert [tuple(t.shape) for t in out["target"]] == [(2, 1, 16, 16, 16), (2, 1, 8, 8, 8), (2, 1, 4, 4, 4)]
    assert set(np.unique(out["target"][0].numpy())) <= {0, 1, 2}
    assert torch.isfinite(out["data"]).all()
    assert set(out) == {"data", "target", "keys"}


def test_unknown_parameter_version():
    params = copy.deepcopy(default_augmentation(PATCH, [1.0] * 3))
    params["version"] = 99
    with pytest.raises(ValueError, match="version 99"):
        build_transforms(params, PATCH)


def test_linear_resampling_equals_scipy_order_1():
    from batchgenerators.augmentations.utils import create_zero_centered_coordinate_mesh, rotate_coords_3d, scale_coords
    from scipy.ndimage import map_coordinates

    from volseg.data.spatial import resample_linear

    rng = np.random.default_rng(0)
    image = rng.normal(size=(2, 30, 34, 32)).astype(np.float32)
    coords = scale_coords(rotate_coords_3d(create_zero_centered_coordinate_mesh((16, 16, 16)), 0.3, -0.2, 0.5), 0.8)
    coords += np.array([15.0, 16.5, 15.5]).reshape(3, 1, 1, 1)
    out, _ = resample_linear(image, np.zeros((1, 30, 34, 32), np.int16), coords)
    expect = np.stack([map_coordinates(c, coords, order=1, mode="constant", cval=0.0) for c in image])
    np.testing.assert_allclose(out, expect, atol=1e-5)


def test_label_resampling_takes_the_majority_of_interpolated_indicators():
    from volseg.data.spatial import resample_linear

    seg = np.zeros((1, 4, 4, 12), np.int16)
    seg[..., 5:] = 3
    seg[..., 9:] = 7
    x = np.array([4.4, 4.6, 8.4, 8.6, 2.0])
    coords = np.stack(np.broadcast_arrays(np.full(5, 1.0), np.full(5, 2.0), x)).reshape(3, 1, 1, 5)
    _, labels = resample_linear(np.zeros((1, 4, 4, 12), np.float32), seg, coords)
    assert labels.dtype == np.int16
    np.testing.assert_array_equal(labels.ravel(), [0, 3, 3, 7, 0])
    _, constant = resample_linear(np.zeros((1, 4, 4, 12), np.float32), np.full((1, 4, 4, 12), 2, np.int16), coords)
    np.testing.assert_array_equal(constant.ravel(), [2] * 5)


def test_low_resolution_keeps_ignored_axis_and_shape():
    from volseg.data.augmentation import SimulateLowResolution

    rng = np.random.default_rng(0)
    slices = rng.normal(size=(1, 1, 6, 1, 1)).astype(np.float32) * np.ones((1, 1, 6, 16, 16), np.float32)
    noise = rng.normal(size=(1, 1, 6, 16, 16)).astype(np.float32)
    transform = SimulateLowResolution((0.5, 0.5), per_channel=True, p_per_channel=1.0, p_per_sample=1.0,
                                      ignore_axes=(0,))
    np.random.seed(0)
    out = transform(data=np.concatenate([slices, noise], axis=1).copy())["data"]
    assert out.shape == (1, 2, 6, 16, 16) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], slices[0, 0], atol=1e-6)  # in-plane constant, z untouched
    assert not np.allclose(out[0, 1], noise[0, 0], atol=1e-2)
    assert abs(out[0, 1].std() - noise.std()) < noise.std()  # smoothed, not destroyed
    never = SimulateLowResolution((0.5, 0.5), p_per_sample=0.0)
    np.testing.assert_array_equal(never(data=noise.copy())["data"], noise)


def test_to_torch_converts_dict_targets_with_their_dtypes():
    from volseg.data.augmentation import ToTorch

    batch = ToTorch()(data=np.zeros((1, 1, 2, 2, 2)), target={"seg": [np.zeros((1, 1, 2, 2, 2), np.int16)],
                                                              "boxes": [np.ones((3, 6), np.float32)],
                                                              "classes": [np.zeros(3, np.int64)]})
    t = batch["target"]
    assert t["seg"][0].dtype == torch.int16 and t["boxes"][0].dtype == torch.float32
    assert t["classes"][0].dtype == torch.int64 and t["boxes"][0].shape == (3, 6)
