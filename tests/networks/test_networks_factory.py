"""Plan dict → network, and validation of the plan's ``network`` part."""

import copy

import pytest
import torch

from volseg.errors import PlanError
from volseg.networks import ResEncUNet, UNet, from_plans

CFG = {"architecture": "unet", "features_per_stage": [4, 8, 16], "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3]],
       "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2]], "n_conv_per_stage": [2, 2, 2], "n_conv_per_stage_decoder": [2, 2],
       "norm": "instance", "activation": "leaky_relu", "deep_supervision": True}


def edited(**changes):
    cfg = copy.deepcopy(CFG)
    for k, v in changes.items():
        if v is None:
            del cfg[k]
        else:
            cfg[k] = v
    return cfg


def test_from_plans_builds_the_planned_network():
    net = from_plans(CFG, in_channels=2, num_outputs=4)
    assert type(net) is UNet and net.deep_supervision
    out = net(torch.zeros(1, 2, 4, 16, 16))
    assert [o.shape for o in out] == [(1, 4, 4, 16, 16), (1, 4, 4, 8, 8)]
    assert type(from_plans(edited(architecture="resenc_unet"), 1, 2)) is ResEncUNet


def test_optional_keys_have_defaults():
    cfg = edited(norm=None, activation=None, deep_supervision=None)
    net = from_plans(cfg, 1, 2)
    assert net.deep_supervision
    assert isinstance(net.encoder.stages[0][0][1], torch.nn.InstanceNorm3d)
    assert isinstance(net.encoder.stages[0][0][2], torch.nn.LeakyReLU)


@pytest.mark.parametrize("changes, message", [
    (dict(strides=None), r"network: missing key\(s\) strides"),
    (dict(dropout=0.1), r"network: unknown key\(s\) dropout"),
    (dict(architecture="vnet"), "network.architecture: unknown architecture 'vnet'"),
    (dict(features_per_stage=[4]), "network.features_per_stage: expected a list of at least 2 stages"),
    (dict(features_per_stage=[4, 0, 8]), "network.features_per_stage: expected positive integers"),
    (dict(strides=[[1, 1, 1], [1, 2, 2]]), r"network.strides: expected 3 entries \(one per stage\), found 2"),
    (dict(strides=[[1, 1, 1], [2, 2], [2, 2, 2]]), r"network.strides\[1\]: expected a \(z, y, x\) triple"),
    (dict(strides=[[1, 2, 2], [1, 2, 2], [2, 2, 2]]), r"network.strides\[0\]: the first stage must not downsample"),
    (dict(kernel_sizes=[[1, 3, 3], [3, 2, 3], [3, 3, 3]]), r"network.kernel_sizes\[1\].*odd"),
    (dict(kernel_sizes=[[3, 3, 3]] * 4), "network.kernel_sizes: expected 3 entries"),
    (dict(n_conv_per_stage=[2, 2]), "network.n_conv_per_stage: expected 3 entries"),
    (dict(n_conv_per_stage_decoder=[2, 2, 2]), r"network.n_conv_per_stage_decoder: expected 2 entries \(stages - 1\)"),
    (dict(n_conv_per_stage_decoder=[2, 0]), "network.n_conv_per_stage_decoder: expected positive integers"),
    (dict(norm="layer"), "network.norm: expected one of instance, batch, group, found 'layer'"),
    (dict(activation="gelu"), "network.activation: expected one of leaky_relu, relu"),
    (dict(deep_supervision="yes"), "network.deep_supervision: expected true or false"),
])
def test_invalid_plans_name_the_bad_key(changes, message):
    with pytest.raises(PlanError, match=message):
        from_plans(edited(**changes), 1, 2)


def test_plan_error_is_a_value_error():
    with pytest.raises(ValueError, match="num_outputs: expected a positive integer, found 0"):
        from_plans(CFG, 1, 0)
    with pytest.raises(ValueError, match="network: expected a dict"):
        from_plans([1, 2], 1, 2)


def test_architecture_needing_other_keys_is_a_plan_error():
    """A segmentation network section naming the detection network fails with a PlanError, not a TypeError."""
    from volseg.errors import PlanError
    from volseg.networks import from_plans

    cfg = {"architecture": "retina_unet", "features_per_stage": [4, 8], "kernel_sizes": [[3, 3, 3]] * 2,
           "strides": [[1, 1, 1], [2, 2, 2]], "n_conv_per_stage": [1, 1], "n_conv_per_stage_decoder": [1]}
    with pytest.raises(PlanError, match="network.architecture 'retina_unet'.*detection_levels"):
        from_plans(cfg, in_channels=1, num_outputs=2)
