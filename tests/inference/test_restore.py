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


def test_uncrop_places_and_fills():
    a = np.ones((2, 3, 4, 5), np.float32)
    out = restore.uncrop(a, [[1, 4], [0, 4], [2, 7]], (6, 6, 8), fill=-1)
    assert out.shape == (2, 6, 6, 8)
    assert (out[:, 1:4, 0:4, 2:7] == 1).all() and (out == 1).sum() == a.size
    assert out[0, 0, 0, 0] == -1
