"""The analytic memory and compute estimates, checked against the networks they describe."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from volseg.networks.retina_unet import RetinaUNet
from volseg.planning.memory import (estimate_gflop, estimate_memory_gb, head_activation_elements, head_flop,
                                    head_parameter_count)

NETWORK = {"architecture": "retina_unet", "features_per_stage": [8, 16, 32], "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3]],
           "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2]], "n_conv_per_stage": [1, 2, 2], "n_conv_per_stage_decoder": [1, 1],
           "norm": "instance", "activation": "leaky_relu", "deep_supervision": True, "detection_levels": [1, 2],
           "num_anchors": 3, "head_channels": 12, "head_convs": 2}
PATCH = [8, 32, 48]


def _retina(num_outputs: int) -> RetinaUNet:
    return RetinaUNet(in_channels=1, num_outputs=num_outputs, **{k: v for k, v in NETWORK.items() if k != "architecture"})


def _plain(network: dict) -> dict:
    return {k: v for k, v in network.items() if k not in ("detection_levels", "num_anchors", "head_channels", "head_convs")}


@pytest.mark.parametrize("num_outputs", [2, 4])
def test_head_parameters_are_those_of_the_network(num_outputs):
    net = _retina(num_outputs)
    real = sum(p.numel() for head in (net.cls_head, net.box_head) for p in head.parameters())
    assert head_parameter_count(NETWORK, num_outputs) == real


def test_head_flop_is_what_torch_counts():
    net = _retina(3).eval()
    feats = [torch.zeros(1, NETWORK["features_per_stage"][lv], *[p // s for p, s in zip(PATCH, stride)])
             for lv, stride in zip(NETWORK["detection_levels"], net.detection_strides)]
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net.cls_head(feats)
        net.box_head(feats)
    assert head_flop(NETWORK, PATCH, 3) == pytest.approx(counter.get_total_flops(), rel=1e-9)


def test_heads_add_to_the_estimates_and_a_plain_unet_has_none():
    plain = _plain(NETWORK)
    assert head_flop(plain, PATCH, 2) == head_activation_elements(plain, PATCH, 2) == head_parameter_count(plain, 2) == 0
    extra_gflop = estimate_gflop(NETWORK, PATCH, 2, 1, 2) - estimate_gflop(plain, PATCH, 2, 1, 2)
    assert extra_gflop == pytest.approx(3 * 2 * head_flop(NETWORK, PATCH, 2) / 1e9)
    extra_gb = estimate_memory_gb(NETWORK, PATCH, 2, 1, 2, "cpu") - estimate_memory_gb(plain, PATCH, 2, 1, 2, "cpu")
    expected = (2 * 4 * head_activation_elements(NETWORK, PATCH, 2) + 16 * head_parameter_count(NETWORK, 2)) / 1e9
    assert extra_gb == pytest.approx(expected)
