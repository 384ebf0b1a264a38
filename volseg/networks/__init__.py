"""Networks: an explicit registry of 3D U-Nets and the plan → network factory.

Registered architectures (``plans["configurations"][c]["network"]["architecture"]``):

* ``"unet"``: :class:`UNet`, plain conv encoder (nnU-Net's PlainConvUNet);
* ``"resenc_unet"``: :class:`ResEncUNet`, residual encoder (nnU-Net's ResidualEncoderUNet);
* ``"retina_unet"``: :class:`RetinaUNet`, U-Net backbone with shared RetinaNet detection heads
  (Retina U-Net, nnDetection's model); returns a dict of ``"seg"``, ``"cls"`` and ``"box"`` outputs.

Example:
    >>> from volseg.networks import from_plans, list_networks
    >>> list_networks()
    ['resenc_unet', 'retina_unet', 'unet']
"""

from volseg.networks.factory import from_plans, network_kwargs
from volseg.networks.registry import build_network, list_networks, register_network
from volseg.networks.retina_unet import (RetinaUNet, anchor_boxes, anchor_centres, flatten_level_outputs,
                                         level_shapes)
from volseg.networks.unet import (PlainConvEncoder, ResEncUNet, ResidualEncoder, UNet, UNetDecoder,
                                  check_topology, count_parameters, deep_supervision_scales)

__all__ = ["register_network", "list_networks", "build_network", "from_plans", "network_kwargs", "UNet",
           "ResEncUNet", "PlainConvEncoder", "ResidualEncoder", "UNetDecoder", "check_topology",
           "count_parameters", "deep_supervision_scales", "RetinaUNet", "flatten_level_outputs", "anchor_boxes",
           "anchor_centres", "level_shapes"]
