"""Networks that see two timepoints: concatenation plus a difference channel, or a siamese encoder.

Both take the plan's U-Net topology and an input of (B, 2·T, z, y, x), the baseline's ``T``
channels first (indices ``baseline``), the follow-up's next (``followup``).

- :class:`DifferenceInput` appends ``follow-up − baseline`` per channel pair to the input of
  an ordinary U-Net (so it has 3·T input channels). Cheap: one U-Net.
- :class:`SiameseUNet` encodes each timepoint with the same encoder (shared weights), fuses
  the two skip features of every level by a 1×1×1 convolution of ``[baseline, follow-up,
  follow-up − baseline]`` and decodes the fused pyramid. About twice the encoder cost.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from volseg.networks.blocks import init_weights
from volseg.networks.unet import UNet


class DifferenceInput(nn.Module):
    """``net(cat([x, x[followup] − x[baseline]]))``: the timepoint difference as extra channels.

    Args:
        net: A network with ``len(baseline) + len(followup) + len(followup)`` input channels.
        baseline, followup: Channel indices of the two timepoints, paired in order.
    """

    def __init__(self, net: nn.Module, baseline: Sequence[int], followup: Sequence[int]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("baseline", torch.as_tensor(list(baseline), dtype=torch.long), persistent=False)
        self.register_buffer("followup", torch.as_tensor(list(followup), dtype=torch.long), persistent=False)

    @property
    def deep_supervision(self) -> bool:
        return self.net.deep_supervision

    @deep_supervision.setter
    def deep_supervision(self, value: bool) -> None:
        self.net.deep_supervision = bool(value)

    def forward(self, x: torch.Tensor):
        diff = x.index_select(1, self.followup) - x.index_select(1, self.baseline)
        return self.net(torch.cat((x, diff), dim=1))


class SiameseUNet(UNet):
    """A U-Net whose encoder runs once per timepoint with shared weights; skips fused per level.

    Args:
        baseline, followup: Channel indices of the two timepoints, paired in order.
        **unet: The :class:`~volseg.networks.unet.UNet` arguments; ``in_channels`` is the
            total (both timepoints).

    Shape:
        Input (B, in_channels, z, y, x); output as :class:`UNet`'s.
    """

    def __init__(self, *, baseline: Sequence[int], followup: Sequence[int], **unet) -> None:
        in_channels = unet.pop("in_channels")
        if len(baseline) != len(followup) or len(baseline) + len(followup) != in_channels:
            raise ValueError(f"siamese encoder: baseline {list(baseline)} and follow-up {list(followup)} channels "
                             f"must pair up and cover the {in_channels} input channels")
        super().__init__(in_channels=len(baseline), **unet)
        self.in_channels = in_channels  # both timepoints: what _check_input expects
        self.baseline, self.followup = list(baseline), list(followup)
        self.fuse = nn.ModuleList(nn.Conv3d(3 * c, c, 1) for c in self.encoder.output_channels)
        self.fuse.apply(init_weights)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Fused skip features, highest resolution first."""
        b = x.shape[0]
        both = torch.cat((x[:, self.baseline], x[:, self.followup]), dim=0)
        skips = self.encoder(both)
        return [f(torch.cat((s[:b], s[b:], s[b:] - s[:b]), dim=1)) for f, s in zip(self.fuse, skips)]

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        self._check_input(x)
        return self.decoder.forward_features(self.encode(x))

    def forward(self, x: torch.Tensor):
        self._check_input(x)
        return self.decoder(self.encode(x))


__all__ = ["DifferenceInput", "SiameseUNet"]
