"""Two-timepoint networks: the difference channel and the siamese encoder."""

import pytest
import torch

from volseg.networks.longitudinal import DifferenceInput, SiameseUNet
from volseg.networks.unet import UNet

TOPOLOGY = dict(features_per_stage=[4, 8], kernel_sizes=[[3, 3, 3]] * 2, strides=[[1, 1, 1], [2, 2, 2]],
                n_conv_per_stage=[1, 1], n_conv_per_stage_decoder=[1])


def test_difference_input_feeds_follow_up_minus_baseline():
    seen = {}

    class Probe(torch.nn.Module):
        deep_supervision = False

        def forward(self, x):
            seen["x"] = x
            return x

    net = DifferenceInput(Probe(), [0], [1])
    x = torch.randn(2, 2, 4, 4, 4)
    net(x)
    assert seen["x"].shape[1] == 3
    torch.testing.assert_close(seen["x"][:, 2], x[:, 1] - x[:, 0])
    net.deep_supervision = True
    assert net.net.deep_supervision is True


def test_siamese_unet_shares_the_encoder_and_sees_the_change():
    net = SiameseUNet(baseline=[0], followup=[1], in_channels=2, num_outputs=4, **TOPOLOGY)
    first = next(m for m in net.encoder.modules() if isinstance(m, torch.nn.Conv3d))
    assert first.in_channels == 1  # one timepoint at a time, shared weights
    x = torch.randn(1, 2, 8, 8, 8)
    out = net(x)
    assert out.shape == (1, 4, 8, 8, 8)
    swapped = net(x.flip(1))
    assert not torch.allclose(out, swapped)  # the fusion is not symmetric in the timepoints
    with pytest.raises(ValueError, match="expected input"):
        net(torch.randn(1, 3, 8, 8, 8))
    with pytest.raises(ValueError, match="pair up"):
        SiameseUNet(baseline=[0], followup=[1, 2], in_channels=3, num_outputs=4, **TOPOLOGY)


def test_siamese_encoder_has_as_many_weights_as_a_one_channel_unet_plus_fusion():
    siamese = SiameseUNet(baseline=[0], followup=[1], in_channels=2, num_outputs=4, **TOPOLOGY)
    plain = UNet(in_channels=1, num_outputs=4, **TOPOLOGY)
    extra = sum(p.numel() for p in siamese.fuse.parameters())
    assert sum(p.numel() for p in siamese.parameters()) == sum(p.numel() for p in plain.parameters()) + extra
