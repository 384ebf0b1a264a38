import numpy as np
import pytest
import torch
import torch.nn.functional as F

import volseg.inference.restore as restore


@pytest.mark.parametrize("shape", [(40, 30, 11), (9, 20, 22), (17, 41, 10)])
def test_slab_resampling_equals_whole_volume(monkeypatch, shape):
    monkeypatch.setattr(restore, "SLAB_VOXELS", 1000)  # many small slabs
    x = torch.randn(3, 17, 20, 22)
    expected = F.interpolate(x[None], size=shape, mode="trilinear", align_corners=False)[0]
    torch.testing.assert_close(restore.resample_logits(x, shape), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["softmax", "sigmoid"])
def test_slab_resample_and_finalize_equals_whole_volume(monkeypatch, mode):
    from volseg.kernels.finalize import finalize

    monkeypatch.setattr(restore, "SLAB_VOXELS", 2000)
    x = torch.randn(3, 11, 14, 9) * 3
    shape = (23, 20, 13)
    whole = finalize(restore.resample_logits(x, shape), mode=mode, return_probabilities=True,
                     return_uncertainty=True, backend="torch")
    slabs = restore.resample_and_finalize(x, shape, mode=mode, return_probabilities=True, return_uncertainty=True,
                                          backend="torch")
    for name in ("labels", "probabilities", "max_prob", "entropy"):
        a, b = getattr(whole, name), getattr(slabs, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.shape == b.shape and a.dtype == b.dtype, name
            torch.testing.assert_close(a.float(), b.float(), atol=1e-3, rtol=0)


def test_uncrop_places_and_fills():
    a = np.ones((2, 3, 4, 5), np.float32)
    out = restore.uncrop(a, [[1, 4], [0, 4], [2, 7]], (6, 6, 8), fill=-1)
    assert out.shape == (2, 6, 6, 8)
    assert (out[:, 1:4, 0:4, 2:7] == 1).all() and (out == 1).sum() == a.size
    assert out[0, 0, 0, 0] == -1


@pytest.mark.parametrize("mode", ["softmax", "sigmoid"])
def test_slab_resample_and_finalize_with_member_terms(monkeypatch, mode):
    from volseg.kernels.finalize import finalize

    monkeypatch.setattr(restore, "SLAB_VOXELS", 2000)
    x = torch.cat([torch.randn(3, 11, 14, 9) * 3, torch.rand(2, 11, 14, 9)])  # K = 3 logits, EH, MI
    shape = (23, 20, 13)
    whole = finalize(restore.resample_logits(x, shape), mode=mode, return_uncertainty=True, backend="torch",
                     member_terms=True)
    slabs = restore.resample_and_finalize(x, shape, mode=mode, return_uncertainty=True, backend="torch",
                                          member_terms=True)
    plain = restore.resample_and_finalize(x[:3], shape, mode=mode, return_uncertainty=True, backend="torch")
    expected = F.interpolate(x[None, 3:], size=shape, mode="trilinear", align_corners=False)[0]
    for i, name in enumerate(("expected_entropy", "mutual_information")):
        a, b = getattr(whole, name), getattr(slabs, name)
        assert b.shape == shape and b.dtype == torch.float16 and getattr(plain, name) is None
        torch.testing.assert_close(a.float(), b.float(), atol=1e-3, rtol=0)
        torch.testing.assert_close(b.float(), expected[i], atol=1e-3, rtol=0)
    for name in ("labels", "max_prob", "entropy"):
        a, b = getattr(plain, name), getattr(slabs, name)
        assert (a is None) == (b is None) and (a is None or torch.equal(a, b)), name


def test_resample_and_finalize_member_terms_needs_classes():
    with pytest.raises(ValueError, match="K \\+ 2 channels"):
        restore.resample_and_finalize(torch.zeros(2, 4, 4, 4), (5, 5, 5), member_terms=True, backend="torch")


@pytest.mark.parametrize("kind", ["torch", "numpy"])
def test_map_to_input_grid_uncrops_as_fp16(kind):
    m = torch.rand(3, 4, 5) + 0.5
    props = {"crop_bbox": [[1, 4], [0, 4], [2, 7]]}
    out = restore.map_to_input_grid(m if kind == "torch" else m.numpy(), props, (6, 6, 8))
    assert isinstance(out, np.ndarray) and out.dtype == np.float16 and out.shape == (6, 6, 8)
    np.testing.assert_array_equal(out[1:4, 0:4, 2:7], m.numpy().astype(np.float16))
    assert (out > 0).sum() == m.numel()
    with pytest.raises(ValueError, match=r"expected a map of spatial shape \(3, 4, 5\)"):
        restore.map_to_input_grid(torch.zeros(3, 4, 4), props, (6, 6, 8))


def test_maps_outside_the_crop_take_the_given_value():
    import numpy as np

    from volseg.inference.restore import map_to_input_grid

    props = {"crop_bbox": [[1, 3], [0, 2], [2, 4]]}
    inside = np.full((2, 2, 2), 0.25, np.float32)
    entropy = map_to_input_grid(inside, props, (4, 2, 5))
    confidence = map_to_input_grid(inside, props, (4, 2, 5), outside=1.0)
    assert entropy.dtype == np.float16 and entropy.sum() == 0.25 * 8 and confidence[0].min() == 1.0
    assert (confidence[1:3, :, 2:4] == 0.25).all() and confidence.sum() == 0.25 * 8 + (40 - 8)
