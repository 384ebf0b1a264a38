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
    for f in ("probabilities", "max_prob", "entropy", "expected_entropy", "mutual_information"):
        torch.testing.assert_close(getattr(full, f), getattr(slab, f), atol=1e-3, rtol=0)
    assert full.mutual_information.float().max() > 0.01  # two different networks disagree somewhere
    assert slab.timings["slab_mode"] and not full.timings["slab_mode"]
    # slab mode is chosen automatically when the full accumulator exceeds the budget
    auto = predict_sliding_window(nets, img, (12, 16, 16), 3, memory_budget_bytes=1000, **kw)
    assert auto.timings["slab_mode"] and torch.equal(auto.labels, full.labels)


def test_slab_along_y_equals_full_mode():
    from volseg.inference.dense import dense_aggregator, slab_axis

    nets = [_net(seed=0), _net(seed=1)]
    img = torch.randn(2, 20, 45, 24)  # the patch is the smallest fraction of y
    assert slab_axis(img.shape[1:], (12, 12, 16)) == 1
    assert dense_aggregator(3, img.shape[1:], (12, 12, 16)).row_axis == 1
    assert dense_aggregator(3, img.shape[1:], (12, 12, 16), backend="triton").row_axis == 0  # z only there
    kw = dict(return_probabilities=True, return_uncertainty=True, mirror_axes=(1, 2), tile_batch=3)
    full = predict_sliding_window(nets, img, (12, 12, 16), 3, slab=False, **kw)
    slab = predict_sliding_window(nets, img, (12, 12, 16), 3, **kw)
    assert slab.timings["slab_mode"] and not full.timings["slab_mode"]
    # the tiles of a voxel are summed in another order (y rows first): labels equal but for exact ties
    assert (full.labels != slab.labels).float().mean() < 1e-3
    for f in ("probabilities", "max_prob", "entropy", "expected_entropy", "mutual_information"):
        torch.testing.assert_close(getattr(full, f), getattr(slab, f), atol=1e-3, rtol=0)
    logits = predict_sliding_window(nets, img, (12, 12, 16), 3, slab=True, return_logits=True, **kw)
    ref = predict_sliding_window(nets, img, (12, 12, 16), 3, slab=False, return_logits=True, **kw)
    torch.testing.assert_close(logits.logits.float(), ref.logits, atol=5e-3, rtol=1e-3)


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


# --- ensemble-member uncertainty: expected entropy (aleatoric) and mutual information (epistemic) ---

def _h(p, dim=0):
    return -(p * p.log()).sum(dim)


def _hb(p):
    return -(p * p.log() + (1 - p) * (1 - p).log())


class Const(torch.nn.Module):
    """The same logits at every voxel of every tile, whatever the input."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor(logits)

    def forward(self, x):
        return self.logits.view(1, -1, 1, 1, 1).expand(x.shape[0], -1, *x.shape[2:]).clone()


def _pointwise(k=3, seed=0):
    """Translation- and mirror-equivariant (1×1×1 convolutions): overlapping tiles and mirrorings agree."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv3d(2, 8, 1), torch.nn.Tanh(), torch.nn.Conv3d(8, k, 1)).eval()


@pytest.mark.parametrize("nets,mirrors", [("one", (0, 1, 2)), ("two", ())])
def test_identical_members_have_no_mutual_information(nets, mirrors):
    net = _pointwise()
    networks = net if nets == "one" else [net, net]
    img = torch.randn(2, 22, 19, 25) * 2
    kw = dict(mirror_axes=mirrors, tile_batch=3, return_probabilities=True)
    on = predict_sliding_window(networks, img, (12, 10, 14), 3, return_uncertainty=True, **kw)
    off = predict_sliding_window(networks, img, (12, 10, 14), 3, **kw)
    assert on.mutual_information.dtype == torch.float16 and on.mutual_information.shape == (22, 19, 25)
    assert (on.mutual_information >= 0).all() and on.mutual_information.float().max() < 1e-4
    torch.testing.assert_close(on.expected_entropy.float(), on.entropy.float(), atol=2e-3, rtol=0)
    assert on.entropy.float().mean() > 0.1
    # the class outputs do not change when the member terms are on
    assert torch.equal(on.labels, off.labels) and torch.equal(on.probabilities, off.probabilities)
    assert off.expected_entropy is None and off.mutual_information is None and off.entropy is None


@pytest.mark.parametrize("slab", [False, True])
def test_disagreeing_members_give_the_hand_computed_mutual_information(slab):
    a, b = [2.0, 0.0, -1.0], [-1.0, 1.5, 0.5]
    img = torch.randn(1, 20, 22, 19)
    res = predict_sliding_window([Const(a), Const(b)], img, (8, 12, 10), 3, mirror_axes=(0, 2),
                                 return_uncertainty=True, slab=slab)
    pa, pb = torch.tensor(a, dtype=torch.float64).softmax(0), torch.tensor(b, dtype=torch.float64).softmax(0)
    eh, mi = (_h(pa) + _h(pb)) / 2, _h((pa + pb) / 2) - (_h(pa) + _h(pb)) / 2
    assert mi > 0.1
    assert abs(res.mutual_information[10, 11, 9].item() - mi) < 1e-3
    assert abs(res.expected_entropy[10, 11, 9].item() - eh) < 1e-3
    assert (res.mutual_information >= 0).all()
    # constant members: exact across tiles; EH + MI is the entropy of the mean probability
    torch.testing.assert_close(res.mutual_information.double(), torch.full((20, 22, 19), mi.item(), dtype=torch.float64),
                               atol=1e-3, rtol=0)
    total = res.expected_entropy.double() + res.mutual_information.double()
    torch.testing.assert_close(total, torch.full_like(total, _h((pa + pb) / 2).item()), atol=2e-3, rtol=0)
    # the predictive entropy is that of the averaged logits, a different quantity
    h_logits = _h(((torch.tensor(a) + torch.tensor(b)) / 2).double().softmax(0))
    assert abs(res.entropy[10, 11, 9].item() - h_logits) < 2e-3


@pytest.mark.parametrize("mode", ["softmax", "sigmoid"])
def test_one_tile_member_terms_equal_the_definitions_per_voxel(mode):
    """Image = patch: one tile, so the maps are the tile-local terms of real (disagreeing) networks."""
    nets, img = [_net(seed=0), _net(seed=1)], torch.randn(2, 10, 12, 14)
    res = predict_sliding_window(nets, img, (10, 12, 14), 3, mirror_axes=(1,), mode=mode,
                                 return_uncertainty=True)
    with torch.no_grad():
        logits = [torch.flip(n(torch.flip(img[None], f)), f)[0].double() for n in nets for f in ([], [3])]
    if mode == "softmax":
        p = torch.stack([v.softmax(0) for v in logits])
        h, h_mean = _h(p, 1), _h(p.mean(0))
    else:
        p = torch.stack([v.sigmoid() for v in logits])
        h, h_mean = _hb(p).mean(1), _hb(p.mean(0)).mean(0)
    eh, mi = h.mean(0), h_mean - h.mean(0)
    torch.testing.assert_close(res.expected_entropy.double(), eh, atol=2e-3, rtol=0)
    torch.testing.assert_close(res.mutual_information.double(), mi, atol=2e-3, rtol=0)
    assert mi.max() > 0.01 and (res.mutual_information >= 0).all()
    torch.testing.assert_close(res.expected_entropy.double() + res.mutual_information.double(), h_mean,
                               atol=3e-3, rtol=0)


def test_return_logits_carries_the_member_terms_through_resampling():
    from volseg.inference.restore import resample_and_finalize, resample_logits

    nets, img = [_net(seed=0), _net(seed=1)], torch.randn(2, 21, 18, 20)
    kw = dict(mirror_axes=(0,), tile_batch=2, return_uncertainty=True)
    direct = predict_sliding_window(nets, img, (12, 12, 12), 3, return_probabilities=True, **kw)
    full = predict_sliding_window(nets, img, (12, 12, 12), 3, return_logits=True, slab=False, **kw)
    slab = predict_sliding_window(nets, img, (12, 12, 12), 3, return_logits=True, slab=True, **kw)
    assert full.logits.shape == (5, 21, 18, 20) and full.logits.dtype == torch.float32
    assert slab.logits.shape == (5, 21, 18, 20) and slab.logits.dtype == torch.float16
    assert torch.equal(full.expected_entropy, full.logits[3]) and torch.equal(full.mutual_information, full.logits[4])
    torch.testing.assert_close(slab.logits.float(), full.logits, atol=5e-3, rtol=1e-3)
    # same grid: finalizing the carried channels gives the direct maps
    same = resample_and_finalize(full.logits, (21, 18, 20), return_probabilities=True, return_uncertainty=True,
                                 backend="torch", member_terms=True)
    assert torch.equal(same.labels, direct.labels)
    for f in ("probabilities", "max_prob", "entropy", "expected_entropy", "mutual_information"):
        torch.testing.assert_close(getattr(same, f).float(), getattr(direct, f).float(), atol=1e-3, rtol=0)
    # another grid: the maps are resampled trilinearly like the logits
    shape = (30, 13, 25)
    fin = resample_and_finalize(full.logits, shape, return_uncertainty=True, backend="torch", member_terms=True)
    expected = resample_logits(full.logits[3:], shape)
    assert fin.expected_entropy.shape == shape and fin.mutual_information.dtype == torch.float16
    torch.testing.assert_close(fin.expected_entropy.float(), expected[0], atol=2e-3, rtol=0)
    torch.testing.assert_close(fin.mutual_information.float(), expected[1], atol=2e-3, rtol=0)
    assert (fin.mutual_information >= 0).all() and fin.labels.shape == shape
    # the class outputs are those of the K logits alone
    plain = resample_and_finalize(full.logits[:3], shape, return_uncertainty=True, backend="torch")
    assert torch.equal(plain.labels, fin.labels) and torch.equal(plain.entropy, fin.entropy)
    assert plain.expected_entropy is None


def test_uncertainty_off_adds_no_channels_and_the_budget_counts_the_extra_ones():
    from volseg.inference.dense import dense_aggregator

    img = torch.randn(2, 16, 16, 16)
    res = predict_sliding_window(_net(), img, (16, 16, 16), 3, return_logits=True)
    assert res.logits.shape[0] == 3 and res.expected_entropy is None and res.mutual_information is None
    res = predict_sliding_window(_net(), img, (16, 16, 16), 3, return_probabilities=True)
    assert res.expected_entropy is None and res.mutual_information is None and res.max_prob is None
    voxels = 40 * 40 * 40
    budget = 4 * 4 * voxels  # between K = 3 and K + 2 = 5 fp32 channels
    # less than two patches long in z and y: the budget decides (at least two: slab mode on the CPU)
    off = dense_aggregator(3, (40, 40, 40), (24, 24, 16), memory_budget_bytes=budget)
    on = dense_aggregator(3, (40, 40, 40), (24, 24, 16), return_uncertainty=True, memory_budget_bytes=budget)
    assert not off.row_wise and on.row_wise
    assert off.channels == 3 and on.channels == 5
    assert dense_aggregator(3, (40, 40, 40), (16, 16, 16)).row_wise
    assert not dense_aggregator(3, (40, 40, 40), (16, 16, 16), return_logits=True).row_wise


def test_wrong_channel_count_with_uncertainty():
    with pytest.raises(ValueError, match="expected network outputs of 4 channels"):
        predict_sliding_window(_net(), torch.randn(2, 16, 16, 16), (16, 16, 16), 4, return_uncertainty=True)


def test_network_seconds_leave_out_the_aggregator_on_the_cpu():
    import time

    from volseg.inference.sliding_window import run_sliding_window

    class SlowAggregator:  # keeps nothing; every add takes 0.25 s
        row_wise, row_axis = False, 0

        def setup(self, grid):
            self.adds = 0

        def start_row(self, start):
            pass

        def add(self, output, offsets, flip_dims):
            time.sleep(0.25)
            self.adds += 1

        def commit(self, offsets):
            pass

        def finish(self):
            return self.adds

    net, image = _net(), torch.randn(2, 16, 16, 16)
    with torch.inference_mode():
        net(image[None])  # first-call costs
    adds, seconds = run_sliding_window(net, image, (16, 16, 16), SlowAggregator(), mirror_axes=(0, 1))
    assert adds == 4  # one tile, 4 mirrorings: 1 s in the aggregator
    assert 0 < seconds < 0.5  # four forward passes of one 16³ tile, however busy the machine
