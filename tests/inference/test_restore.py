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
