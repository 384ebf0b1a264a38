"""U-Nets: shapes, deep supervision, a train and an eval step for every registered segmentation network
(the detection network ``retina_unet`` returns a dict and has its own tests)."""

import pytest
import torch

from volseg.data.augmentation import DeepSupervisionTargets
from volseg.networks import (build_network, count_parameters, deep_supervision_scales, list_networks)
from volseg.training.losses import build_loss

# anisotropic: no pooling along z in the first downsampling stage
TOPOLOGY = dict(features_per_stage=[4, 8, 16], kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3]],
                strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2]], n_conv_per_stage=[1, 2, 2], n_conv_per_stage_decoder=[1, 1])
SHAPE = (2, 1, 4, 16, 16)
SEGMENTATION_NETWORKS = [n for n in list_networks() if n != "retina_unet"]


def make(name, deep_supervision=True, num_outputs=3, **over):
    torch.manual_seed(0)
    return build_network(name, in_channels=SHAPE[1], num_outputs=num_outputs, deep_supervision=deep_supervision,
                         **{**TOPOLOGY, **over})


def blob_batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(SHAPE, generator=g)
    seg = torch.zeros((2, 1, 4, 16, 16), dtype=torch.int16)
    seg[:, :, 1:3, 4:10, 4:10] = 1
    seg[:, :, :, 11:14, 2:6] = 2
    x = x + 2.0 * seg.float()  # learnable: intensity tells the class
    return x, seg


@pytest.mark.parametrize("name", SEGMENTATION_NETWORKS)
def test_train_step_lowers_loss_and_eval_forward(name):
    net = make(name)
    x, seg = blob_batch()
    scales = deep_supervision_scales(TOPOLOGY["strides"])
    targets = [torch.from_numpy(t) for t in DeepSupervisionTargets(scales)(seg=seg.numpy())["target"]]
    loss_fn = build_loss({"name": "dice_ce"}, mode="softmax", deep_supervision=True)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    net.train()
    losses = []
    for _ in range(6):
        opt.zero_grad()
        out = net(x)
        assert [tuple(o.shape[2:]) for o in out] == [tuple(t.shape[2:]) for t in targets]
        loss = loss_fn(out, targets)
        loss.backward()
        # every parameter takes part (DDP requires it), the weight-0 head with a zero gradient
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]

    net.eval()
    net.deep_supervision = False
    with torch.no_grad():
        out = net(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3, 4, 16, 16) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", SEGMENTATION_NETWORKS)
def test_deep_supervision_shapes_follow_scales(name):
    strides = [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2]]
    net = make(name, features_per_stage=[2, 4, 4, 8], kernel_sizes=[[1, 3, 3]] * 2 + [[3, 3, 3]] * 2,
               strides=strides, n_conv_per_stage=[1] * 4, n_conv_per_stage_decoder=[1] * 3)
    x = torch.randn(1, 1, 2, 16, 24)
    out = net(x)
    scales = deep_supervision_scales(strides)
    assert scales == [(1.0, 1.0, 1.0), (1.0, 0.5, 0.5), (1.0, 0.25, 0.25)]
    assert len(out) == len(strides) - 1
    for o, s in zip(out, scales):
        assert o.shape == (1, 3, *(round(n * f) for n, f in zip(x.shape[2:], s)))


def test_toggle_deep_supervision_keeps_state_dict():
    net = make("unet")
    keys = set(net.state_dict())
    net.deep_supervision = False
    assert not net.deep_supervision and not net.decoder.deep_supervision
    assert set(net.state_dict()) == keys
    assert isinstance(net(torch.zeros(SHAPE)), torch.Tensor)


@pytest.mark.parametrize("norm", ["instance", "batch", "group"])
@pytest.mark.parametrize("activation", ["leaky_relu", "relu"])
def test_norms_and_activations(norm, activation):
    net = make("resenc_unet", deep_supervision=False, norm=norm, activation=activation)
    assert net(torch.randn(SHAPE)).shape == (2, 3, 4, 16, 16)


@pytest.mark.parametrize("name", SEGMENTATION_NETWORKS)
def test_encoder_decoder_reusable_as_backbone(name):
    net = make(name)
    x = torch.randn(SHAPE)
    skips = net.encoder(x)
    assert [s.shape[1] for s in skips] == net.feature_channels == TOPOLOGY["features_per_stage"]
    feats = net.forward_features(x)
    assert net.feature_strides == [(1, 1, 1), (1, 2, 2), (2, 4, 4)]
    for f, c, st in zip(feats, net.feature_channels, net.feature_strides):
        assert f.shape == (2, c, *(n // s for n, s in zip(SHAPE[2:], st)))
    assert len(net.decoder(skips)) == 2


def test_nan_input_propagates_without_crash():
    # Documented behaviour: NaN in, NaN out (instance norm spreads it); callers must clean inputs.
    net = make("unet", deep_supervision=False).eval()
    x = torch.randn(SHAPE)
    x[0, 0, 0, 0, 0] = float("nan")
    with torch.no_grad():
        out = net(x)
    assert torch.isnan(out[0]).any() and torch.isfinite(out[1]).all()


def test_constant_input_gives_finite_output():
    net = make("unet", deep_supervision=False).eval()
    with torch.no_grad():
        assert torch.isfinite(net(torch.zeros(SHAPE))).all()


def test_bad_input_shapes_raise():
    net = make("unet")
    with pytest.raises(ValueError, match="not divisible by the network's total stride"):
        net(torch.zeros(1, 1, 4, 16, 15))
    with pytest.raises(ValueError, match=r"expected input \(B, 1, z, y, x\)"):
        net(torch.zeros(1, 2, 4, 16, 16))


def test_weight_init_he_and_zero_bias():
    net = make("unet", features_per_stage=[32, 64, 64], deep_supervision=False)
    convs = [m for m in net.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))]
    assert all(torch.count_nonzero(m.bias) == 0 for m in convs)
    w = net.encoder.stages[1][1][0].weight  # 64 x 64 x 3x3x3
    expected = (2.0 / (1 + 1e-4) / w[0].numel()) ** 0.5
    assert abs(float(w.detach().std()) / expected - 1) < 0.05


def test_count_parameters():
    net = make("unet", features_per_stage=[2, 4], kernel_sizes=[[1, 1, 1]] * 2, strides=[[1, 1, 1], [2, 2, 2]],
               n_conv_per_stage=[1, 1], n_conv_per_stage_decoder=[1], num_outputs=2)
    # enc: conv 1->2 (4) + IN (4); conv 2->4 (12) + IN (8); dec: tconv 4->2 k8 (66); conv 4->2 (10) + IN (4);
    # one head 2->2 (6)
    assert count_parameters(net) == 4 + 4 + 12 + 8 + 66 + 10 + 4 + 6
    net.decoder.requires_grad_(False)
    assert count_parameters(net) == 28 and count_parameters(net, trainable_only=False) == 114
