"""The explicit network registry."""

import pytest
import torch

from volseg.networks import UNet, build_network, list_networks, register_network
from volseg.networks import registry

TINY = dict(in_channels=1, num_outputs=2, features_per_stage=[4, 8], kernel_sizes=[[3, 3, 3]] * 2,
            strides=[[1, 1, 1], [2, 2, 2]], n_conv_per_stage=[1, 1], n_conv_per_stage_decoder=[1])


def test_builtin_networks_are_listed():
    assert {"unet", "resenc_unet"} <= set(list_networks())
    assert list_networks() == sorted(list_networks())


def test_build_network_returns_registered_class():
    assert type(build_network("unet", **TINY)) is UNet


def test_unknown_network_names_the_registered_ones():
    with pytest.raises(ValueError, match="unknown network architecture 'vnet'.*unet"):
        build_network("vnet", **TINY)


def test_register_and_duplicate(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_network("tiny_test_net")
    def tiny(**kw):
        return torch.nn.Conv3d(kw["in_channels"], kw["num_outputs"], 1)

    assert "tiny_test_net" in list_networks()
    assert isinstance(build_network("tiny_test_net", in_channels=1, num_outputs=2), torch.nn.Conv3d)
    register_network("tiny_test_net")(tiny)  # the same function again (module reload) is fine

    def other(**kw):
        return torch.nn.Identity()

    with pytest.raises(ValueError, match="'tiny_test_net' is already registered"):
        register_network("tiny_test_net")(other)
