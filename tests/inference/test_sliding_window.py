import pytest
import torch
from monai.inferers import sliding_window_inference

from volseg.inference.sliding_window import predict_sliding_window


def _net(c_in=2, k=3, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv3d(c_in, 8, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv3d(8, k, 3, padding=1)).eval()


class PlusOne(torch.nn.Module):
    def forward(self, x):
        return x + 1


def test_identity_network_comes_back_exactly():
    img = torch.randn(3, 21, 30, 17)
    res = predict_sliding_window(PlusOne(), img, (8, 12, 10), 3, return_logits=True, tile_batch=3)
    torch.testing.assert_close(res.logits, img + 1, atol=1e-5, rtol=1e-5)


def test_matches_monai_gaussian_sliding_window():
    # The grids coincide (40 = 16 + 3·8, ...). MONAI clamps its 3D Gaussian at 1e-3, which no separable
    # weight can reproduce; at σ = patch/4 neither Gaussian reaches a clamp, so the outputs must agree.
    net, img = _net(), torch.randn(2, 40, 40, 48)
    res = predict_sliding_window(net, img, (16, 20, 24), 3, return_logits=True, sigma_scale=0.25, tile_batch=4)
    with torch.no_grad():
        ref = sliding_window_inference(img[None], (16, 20, 24), 4, net, overlap=0.5, mode="gaussian",
                                       sigma_scale=0.25)[0]
    torch.testing.assert_close(res.logits, ref, atol=1e-5, rtol=1e-5)


class Ramp(torch.nn.Module):
    """Not flip-equivariant: the output depends on the position inside the tile."""

    def forward(self, x):
        z = torch.linspace(0, 1, x.shape[2]).view(1, 1, -1, 1, 1)
        return torch.cat([x[:, :1] * 0 + z, x[:, :1] * 2], 1)


def test_mirroring_maps_back():
    img = torch.randn(1, 8, 8, 8)
    res = predict_sliding_window(Ramp(), img, (8, 8, 8), 2, mirror_axes=(0,), return_logits=True)
    # mean of the ramp and its flip is 0.5 everywhere; the image channel is flip-invariant here
    torch.testing.assert_close(res.logits[0], torch.full((8, 8, 8), 0.5), atol=1e-5, rtol=0)
    torch.testing.assert_close(res.logits[1], img[0] * 2, atol=1e-5, rtol=0)


def test_slab_mode_equals_full_mode_and_ensembles():
    nets = [_net(seed=0), _net(seed=1)]
    img = torch.randn(2, 37, 26, 30)
    kw = dict(return_probabilities=True, return_uncertainty=True, mirror_axes=(1, 2), tile_batch=2)
    full = predict_sliding_window(nets, img, (12, 16, 16), 3, slab=False, **kw)
    slab = predict_sliding_window(nets, img, (12, 16, 16), 3, slab=True, **kw)
    assert torch.equal(full.labels, slab.labels)
    for f in ("probabilities", "max_prob", "entropy"):
        torch.testing.assert_close(getattr(full, f), getattr(slab, f), atol=1e-3, rtol=0)
    assert slab.timings["slab_mode"] and not full.timings["slab_mode"]
    # slab mode is chosen automatically when the full accumulator exceeds the budget
    auto = predict_sliding_window(nets, img, (12, 16, 16), 3, memory_budget_bytes=1000, **kw)
    assert auto.timings["slab_mode"] and torch.equal(auto.labels, full.labels)


def test_probabilities_and_entropy_are_consistent():
    res = predict_sliding_window(_net(), torch.randn(2, 20, 20, 20), (16, 16, 16), 3, return_probabilities=True,
                                 return_uncertainty=True)
    p = res.probabilities.float()
    torch.testing.assert_close(p.sum(0), torch.ones(20, 20, 20), atol=3e-3, rtol=0)
    assert torch.equal(p.argmax(0).to(torch.uint8), res.labels) or (p.argmax(0) != res.labels).float().mean() < 1e-3
    ent = -(p.clamp_min(1e-6) * p.clamp_min(1e-6).log()).sum(0)
    torch.testing.assert_close(res.entropy.float(), ent, atol=5e-3, rtol=0)


def test_image_smaller_than_patch_is_padded_and_cropped():
    img = torch.randn(2, 5, 30, 9)
    res = predict_sliding_window(_net(), img, (16, 16, 16), 3, return_probabilities=True)
    assert res.labels.shape == (5, 30, 9) and res.probabilities.shape == (3, 5, 30, 9)


def test_deterministic():
    net, img = _net(), torch.randn(2, 30, 30, 30)
    a = predict_sliding_window(net, img, (16, 16, 16), 3, return_logits=True)
    b = predict_sliding_window(net, img, (16, 16, 16), 3, return_logits=True)
    assert torch.equal(a.logits, b.logits)


def test_bad_image_shape():
    with pytest.raises(ValueError, match=r"expected a \(C, Z, Y, X\) image"):
        predict_sliding_window(_net(), torch.zeros(20, 20, 20), (16, 16, 16), 3)
