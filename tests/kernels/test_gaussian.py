import pytest
import torch

from volseg.kernels.gaussian import gaussian_1d, normalizer_1d, patch_weight, tile_starts


@pytest.mark.parametrize("size,patch,step", [(40, 16, 0.5), (41, 16, 0.5), (16, 16, 0.5), (100, 32, 0.25)])
def test_tile_starts_cover_the_axis(size, patch, step):
    starts = tile_starts(size, patch, step)
    assert starts[0] == 0 and starts[-1] == size - patch
    assert all(b - a <= patch * step for a, b in zip(starts, starts[1:]))
    assert starts == sorted(set(starts))


def test_tile_starts_rejects_small_axis():
    with pytest.raises(ValueError, match="pad it first"):
        tile_starts(10, 16, 0.5)


def test_separable_normalizer_equals_summed_3d_weights():
    shape, patch = (20, 18, 22), (8, 6, 10)
    w = [gaussian_1d(p, 0.125) for p in patch]
    starts = [tile_starts(s, p, 0.5) for s, p in zip(shape, patch)]
    full = torch.zeros(shape)
    pw = patch_weight(*w)
    for z in starts[0]:
        for y in starts[1]:
            for x in starts[2]:
                full[z:z + 8, y:y + 6, x:x + 10] += pw
    n = [normalizer_1d(s, st, wi) for s, st, wi in zip(shape, starts, w)]
    sep = n[0][:, None, None] * n[1][None, :, None] * n[2][None, None, :]
    torch.testing.assert_close(sep, full, rtol=1e-5, atol=1e-9)


def test_gaussian_peaks_at_centre():
    g = gaussian_1d(9, 0.125)
    assert g[4] == 1.0 and g.argmax() == 4 and (g > 0).all()


def test_gaussian_centre_middle_or_half_index():
    even = gaussian_1d(8, 0.125)
    assert torch.equal(even, even.flip(0)) and even[3] == even[4] < 1.0  # symmetric: the peak between 3 and 4
    nn = gaussian_1d(8, 0.125, center="half_index")
    assert nn[4] == 1.0 and nn.argmax() == 4 and torch.allclose(nn[1:], nn[1:].flip(0))  # voxel 4, as nnU-Net
    assert torch.equal(gaussian_1d(9, 0.125, center="half_index"), gaussian_1d(9, 0.125))  # odd: the same
    with pytest.raises(ValueError, match="unknown Gaussian centre"):
        gaussian_1d(8, 0.125, center="left")
