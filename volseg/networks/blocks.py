"""Building blocks of the 3D U-Nets: conv-norm-activation stacks and residual blocks.

Written with plain torch layers rather than MONAI's ``UnetBasicBlock``/``UnetResBlock``:
those fix two convolutions per block and drop the conv bias, whereas the plans give any
number of convolutions per stage and we keep nnU-Net's layer layout (conv with bias →
norm → non-linearity) so that state dicts stay simple to read.

All blocks take and return (B, C, z, y, x) tensors; kernel sizes and strides are
(z, y, x) triples.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

NORMS = ("instance", "batch", "group")
ACTIVATIONS = ("leaky_relu", "relu")


def make_norm(name: str, channels: int) -> nn.Module:
    """Normalization layer over ``channels`` feature maps.

    Args:
        name: ``"instance"`` (InstanceNorm3d, affine, eps 1e-5), ``"batch"`` (BatchNorm3d,
            eps 1e-5) or ``"group"`` (GroupNorm with ``gcd(channels, 8)`` groups, eps 1e-5).
        channels: Number of channels C of the (B, C, z, y, x) input.
    """
    if name == "instance":
        return nn.InstanceNorm3d(channels, eps=1e-5, affine=True)
    if name == "batch":
        return nn.BatchNorm3d(channels, eps=1e-5)
    if name == "group":
        return nn.GroupNorm(math.gcd(channels, 8), channels, eps=1e-5)
    raise ValueError(f"unknown norm {name!r}; expected one of {', '.join(NORMS)}")


def make_activation(name: str) -> nn.Module:
    """Non-linearity: ``"leaky_relu"`` (negative slope 0.01, nnU-Net's) or ``"relu"``."""
    if name == "leaky_relu":
        return nn.LeakyReLU(negative_slope=1e-2, inplace=True)
    if name == "relu":
        return nn.ReLU(inplace=True)
    raise ValueError(f"unknown activation {name!r}; expected one of {', '.join(ACTIVATIONS)}")


def _padding(kernel_size: Sequence[int]) -> tuple[int, int, int]:
    return tuple(k // 2 for k in kernel_size)  # "same" for odd kernels (validated upstream)


class ConvNormAct(nn.Sequential):
    """Conv3d → norm → activation (activation optional).

    Args:
        in_channels, out_channels: Channels of input and output.
        kernel_size: (z, y, x) odd kernel size; padding keeps the size at stride 1.
        stride: (z, y, x) stride; the output size is ``ceil(n / stride)`` per axis.
        norm: See :func:`make_norm`.
        activation: See :func:`make_activation`; None for conv → norm only.

    Shape:
        (B, in_channels, z, y, x) → (B, out_channels, z / sz, y / sy, x / sx).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Sequence[int],
                 stride: Sequence[int] = (1, 1, 1), norm: str = "instance", activation: str | None = "leaky_relu"):
        layers = [nn.Conv3d(in_channels, out_channels, tuple(kernel_size), tuple(stride),
                            padding=_padding(kernel_size), bias=True),
                  make_norm(norm, out_channels)]
        if activation is not None:
            layers.append(make_activation(activation))
        super().__init__(*layers)


class StackedConvs(nn.Sequential):
    """``n`` :class:`ConvNormAct` layers; only the first one is strided and changes channels.

    Shape:
        (B, in_channels, z, y, x) → (B, out_channels, z / sz, y / sy, x / sx).
    """

    def __init__(self, n: int, in_channels: int, out_channels: int, kernel_size: Sequence[int],
                 stride: Sequence[int] = (1, 1, 1), norm: str = "instance", activation: str = "leaky_relu"):
        super().__init__(*[ConvNormAct(in_channels if i == 0 else out_channels, out_channels, kernel_size,
                                       stride if i == 0 else (1, 1, 1), norm, activation) for i in range(n)])


class BasicResBlock(nn.Module):
    """Residual block: act(norm(conv(act(norm(conv(x))))) + skip(x)) (nnU-Net's BasicBlockD).

    The skip path is the identity, or average pooling (kernel = stride) followed by a
    1x1x1 conv → norm when the stride or the channel count changes.

    Shape:
        (B, in_channels, z, y, x) → (B, out_channels, z / sz, y / sy, x / sx).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Sequence[int],
                 stride: Sequence[int] = (1, 1, 1), norm: str = "instance", activation: str = "leaky_relu"):
        super().__init__()
        self.conv1 = ConvNormAct(in_channels, out_channels, kernel_size, stride, norm, activation)
        self.conv2 = ConvNormAct(out_channels, out_channels, kernel_size, (1, 1, 1), norm, None)
        skip: list[nn.Module] = []
        if any(s != 1 for s in stride):
            skip.append(nn.AvgPool3d(tuple(stride), tuple(stride), ceil_mode=True))
        if in_channels != out_channels:
            skip.append(ConvNormAct(in_channels, out_channels, (1, 1, 1), (1, 1, 1), norm, None))
        self.skip = nn.Sequential(*skip)  # empty Sequential is the identity
        self.act = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.skip(x))


class StackedResBlocks(nn.Sequential):
    """``n`` :class:`BasicResBlock`; only the first one is strided and changes channels."""

    def __init__(self, n: int, in_channels: int, out_channels: int, kernel_size: Sequence[int],
                 stride: Sequence[int] = (1, 1, 1), norm: str = "instance", activation: str = "leaky_relu"):
        super().__init__(*[BasicResBlock(in_channels if i == 0 else out_channels, out_channels, kernel_size,
                                         stride if i == 0 else (1, 1, 1), norm, activation) for i in range(n)])


def init_weights(module: nn.Module) -> None:
    """He (kaiming normal, a=1e-2) init of conv and transposed-conv weights, zero biases.

    Use with ``network.apply(init_weights)``; norm layers keep their defaults (weight 1, bias 0).
    """
    if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
        nn.init.kaiming_normal_(module.weight, a=1e-2)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
