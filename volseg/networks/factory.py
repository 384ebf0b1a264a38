"""Plan → network: map the ``network`` part of a configuration to constructor arguments.

The only place that reads a plan dict for the networks; the network classes take built
parts as keyword arguments and never see a plan, a path or an environment variable.
"""

from __future__ import annotations

import torch

from volseg.errors import PlanError
from volseg.networks.registry import build_network, list_networks
from volseg.networks.unet import check_topology

REQUIRED_KEYS = ("architecture", "features_per_stage", "kernel_sizes", "strides", "n_conv_per_stage",
                 "n_conv_per_stage_decoder")
OPTIONAL_KEYS = {"norm": "instance", "activation": "leaky_relu", "deep_supervision": True}
# keys of detection networks (retina_unet), passed only when the plan has them
DETECTION_KEYS = ("detection_levels", "num_anchors", "head_channels", "head_convs", "prior_probability")


def network_kwargs(network_cfg: dict) -> dict:
    """Validate a plan's ``network`` dict and return the constructor keyword arguments.

    Args:
        network_cfg: ``plans["configurations"][name]["network"]`` (see docs/formats.md).

    Returns:
        Keyword arguments for the registered constructor, without ``in_channels`` and
        ``num_outputs``; lists of lists for kernel sizes and strides.

    Raises:
        PlanError: (a ``ValueError``) naming the missing or bad key, e.g.
            ``network.strides[2]: expected a (z, y, x) triple of positive integers, found [2, 2]``.
    """
    if not isinstance(network_cfg, dict):
        raise PlanError(None, f"network: expected a dict, found {type(network_cfg).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in network_cfg]
    if missing:
        raise PlanError(None, f"network: missing key(s) {', '.join(missing)}")
    unknown = sorted(set(network_cfg) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS) - set(DETECTION_KEYS))
    if unknown:
        raise PlanError(None, f"network: unknown key(s) {', '.join(unknown)}")
    if network_cfg["architecture"] not in list_networks():
        raise PlanError(None, f"network.architecture: unknown architecture {network_cfg['architecture']!r}; "
                              f"registered: {', '.join(list_networks())}")
    kw = {k: network_cfg[k] for k in REQUIRED_KEYS[1:]}
    kw.update({k: network_cfg.get(k, default) for k, default in OPTIONAL_KEYS.items()})
    kw.update({k: network_cfg[k] for k in DETECTION_KEYS if k in network_cfg})
    if not isinstance(kw["deep_supervision"], bool):
        raise PlanError(None, f"network.deep_supervision: expected true or false, found {kw['deep_supervision']!r}")
    try:
        check_topology(kw["features_per_stage"], kw["kernel_sizes"], kw["strides"], kw["n_conv_per_stage"],
                       kw["n_conv_per_stage_decoder"], kw["norm"], kw["activation"], prefix="network.")
    except ValueError as e:
        raise PlanError(None, str(e)) from None
    return kw


def from_plans(network_cfg: dict, in_channels: int, num_outputs: int) -> torch.nn.Module:
    """Build the network a plan describes, freshly initialized (He init, zero biases).

    Args:
        network_cfg: ``plans["configurations"][name]["network"]``; ``architecture`` is a
            registry key (see :func:`volseg.networks.list_networks`).
        in_channels: Image channels (``len(plans["dataset"]["channel_names"])``).
        num_outputs: ``plans["outputs"]["num_outputs"]`` (softmax classes or sigmoid regions).

    Returns:
        The network; ``deep_supervision`` as in the plan (default true).

    Raises:
        PlanError: (a ``ValueError``) the dict is invalid; the message names the key.

    Example:
        >>> cfg = {"architecture": "unet", "features_per_stage": [8, 16], "kernel_sizes": [[3, 3, 3]] * 2,
        ...        "strides": [[1, 1, 1], [2, 2, 2]], "n_conv_per_stage": [2, 2], "n_conv_per_stage_decoder": [2]}
        >>> net = from_plans(cfg, in_channels=1, num_outputs=2)
    """
    kw = network_kwargs(network_cfg)
    try:
        return build_network(network_cfg["architecture"], in_channels=in_channels, num_outputs=num_outputs, **kw)
    except ValueError as e:  # in_channels / num_outputs
        raise PlanError(None, str(e)) from None
    except TypeError as e:  # an architecture that needs keys this plan's network section lacks
        raise PlanError(None, f"network.architecture {network_cfg['architecture']!r}: {e}") from None
