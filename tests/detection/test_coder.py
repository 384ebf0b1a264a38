"""Box deltas: (dz, dy, dx, dd, dh, dw) relative to (z0, y0, x0, z1, y1, x1) anchors."""

import math

import pytest
import torch

from volseg.detection.coder import DEFAULT_CLIP, BoxCoder


def test_encode_by_hand_on_an_anisotropic_anchor():
    # anchor: centre (1, 4, 2), extent (2, 8, 4); box: centre (2, 2, 2), extent (4, 4, 4)
    anchor = torch.tensor([[0., 0., 0., 2., 8., 4.]])
    box = torch.tensor([[0., 0., 0., 4., 4., 4.]])
    deltas = BoxCoder().encode(box, anchor)[0].tolist()
    expected = [(2 - 1) / 2, (2 - 4) / 8, 0.0, math.log(4 / 2), math.log(4 / 8), math.log(4 / 4)]
    assert deltas == pytest.approx(expected, abs=1e-6)


def test_weights_scale_each_delta():
    anchor = torch.tensor([[0., 0., 0., 2., 8., 4.]])
    box = torch.tensor([[1., 2., 3., 5., 6., 9.]])
    w = (10., 10., 10., 5., 5., 5.)
    plain, weighted = BoxCoder().encode(box, anchor), BoxCoder(weights=w).encode(box, anchor)
    torch.testing.assert_close(weighted, plain * torch.tensor(w))
    torch.testing.assert_close(BoxCoder(weights=w).decode(weighted, anchor), box)


def test_round_trip_batched_with_anisotropic_anchors():
    g = torch.Generator().manual_seed(0)
    lo = torch.rand(50, 3, generator=g, dtype=torch.float64) * 20
    extent = torch.tensor([1.5, 6.0, 3.0], dtype=torch.float64) * (0.5 + torch.rand(50, 3, generator=g,
                                                                                      dtype=torch.float64))
    anchors = torch.cat([lo, lo + extent], dim=1)                                    # (N, 6)
    shift = torch.randn(4, 50, 3, generator=g, dtype=torch.float64) * 3
    scale = torch.exp(torch.randn(4, 50, 3, generator=g, dtype=torch.float64) * 0.5)
    boxes = torch.cat([lo + shift, lo + shift + extent * scale], dim=2)              # (B, N, 6)
    coder = BoxCoder(weights=(2., 1., 3., 1., 0.5, 1.))
    deltas = coder.encode(boxes, anchors)
    assert deltas.shape == (4, 50, 6)
    torch.testing.assert_close(coder.decode(deltas, anchors), boxes, rtol=1e-5, atol=1e-4)


def test_decode_clamps_the_log_ratios():
    anchor = torch.tensor([[0., 0., 0., 2., 8., 4.]])
    deltas = torch.tensor([[0., 0., 0., 50., -3., 0.]])
    box = BoxCoder().decode(deltas, anchor)[0]
    extent = box[3:] - box[:3]
    assert extent[0].item() == pytest.approx(2 * math.exp(DEFAULT_CLIP), rel=1e-5)   # clamped
    assert extent[1].item() == pytest.approx(8 * math.exp(-3), rel=1e-5)             # below the bound: exact
    assert box[0].item() == pytest.approx(1 - extent[0].item() / 2, rel=1e-5)         # centre kept


def test_decode_is_differentiable_and_keeps_the_shape():
    deltas = torch.zeros(2, 3, 6, requires_grad=True)
    anchors = torch.tensor([[0., 0., 0., 2., 2., 2.]]).expand(3, 6)
    boxes = BoxCoder().decode(deltas, anchors)
    assert boxes.shape == (2, 3, 6)
    torch.testing.assert_close(boxes[1], anchors)
    boxes.sum().backward()
    assert deltas.grad is not None and torch.isfinite(deltas.grad).all()
    empty = torch.zeros(0, 6, requires_grad=True)
    assert BoxCoder().decode(empty, torch.zeros(0, 6)).shape == (0, 6)


@pytest.mark.parametrize("weights", [(1., 1., 1.), (1., 1., 1., 1., 1., 0.), (1., 1., 1., 1., 1., -1.)])
def test_bad_weights_raise(weights):
    with pytest.raises(ValueError, match="weights"):
        BoxCoder(weights=weights)


def test_bad_inputs_raise():
    coder = BoxCoder()
    anchor = torch.tensor([[0., 0., 0., 2., 2., 2.]])
    with pytest.raises(ValueError, match="positive extents"):
        coder.encode(torch.tensor([[0., 0., 0., 0., 2., 2.]]), anchor)
    with pytest.raises(ValueError, match=r"\(\.\.\., 6\)"):
        coder.encode(torch.zeros(3, 4), anchor)
    with pytest.raises(ValueError, match="do not broadcast"):
        coder.decode(torch.zeros(2, 5, 6), torch.zeros(3, 6))
    with pytest.raises(ValueError, match="finite"):
        coder.decode(torch.tensor([[0., float("nan"), 0., 0., 0., 0.]]), anchor)
    with pytest.raises(ValueError, match="clip"):
        BoxCoder(clip=0.0)
