"""Dynamic 3D U-Nets: plain conv encoder ("unet") and residual encoder ("resenc_unet").

After nnU-Net's ``PlainConvUNet`` / ``ResidualEncoderUNet`` and MONAI's ``DynUNet``: the
topology (stages, kernel sizes, strides, convolutions per stage) comes from the plan, so
one class serves every dataset. Downsampling is the stride of the first conv of a stage,
upsampling a transposed conv with kernel = stride, skips are concatenated, and each
decoder stage has a 1x1x1 segmentation head (deep supervision).

The encoder and decoder are separate modules so that a detector (Retina U-Net) can reuse
them: ``encoder(x)`` returns the skip features, ``decoder.forward_features(skips)`` the
feature pyramid, ``feature_channels`` / ``feature_strides`` describe its levels.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from volseg.networks.blocks import (ACTIVATIONS, NORMS, ConvNormAct, StackedConvs, StackedResBlocks,
                                    init_weights)
from volseg.networks.registry import register_network

Triple = Sequence[int]


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_list(key: str, value, n: int, what: str) -> None:
    if not isinstance(value, (list, tuple)) or len(value) != n:
        found = f"{len(value)} entries" if isinstance(value, (list, tuple)) else repr(value)
        raise ValueError(f"{key}: expected {n} entries ({what}), found {found}")


def _check_triples(key: str, value, n: int, odd: bool) -> None:
    _check_list(key, value, n, "one per stage")
    for i, t in enumerate(value):
        ok = isinstance(t, (list, tuple)) and len(t) == 3 and all(_is_int(v) and v >= 1 for v in t)
        if not ok or (odd and any(v % 2 == 0 for v in t)):
            kind = "positive odd integers" if odd else "positive integers"
            raise ValueError(f"{key}[{i}]: expected a (z, y, x) triple of {kind}, found {t!r}")


def check_topology(features_per_stage, kernel_sizes, strides, n_conv_per_stage, n_conv_per_stage_decoder,
                   norm: str = "instance", activation: str = "leaky_relu", prefix: str = "") -> None:
    """Validate a U-Net topology; every error names the offending key (with ``prefix``).

    Raises:
        ValueError: Inconsistent lengths, a stride or kernel that is not a (z, y, x) triple of
            positive (kernels: odd) integers, a first stride other than (1, 1, 1), fewer than two
            stages, or an unknown norm or activation.
    """
    if not isinstance(features_per_stage, (list, tuple)) or len(features_per_stage) < 2:
        raise ValueError(f"{prefix}features_per_stage: expected a list of at least 2 stages, "
                         f"found {features_per_stage!r}")
    n = len(features_per_stage)
    if not all(_is_int(f) and f >= 1 for f in features_per_stage):
        raise ValueError(f"{prefix}features_per_stage: expected positive integers, found {features_per_stage!r}")
    _check_triples(f"{prefix}kernel_sizes", kernel_sizes, n, odd=True)
    _check_triples(f"{prefix}strides", strides, n, odd=False)
    if list(strides[0]) != [1, 1, 1]:
        raise ValueError(f"{prefix}strides[0]: the first stage must not downsample, expected [1, 1, 1], "
                         f"found {list(strides[0])}")
    for key, value, m, what in ((f"{prefix}n_conv_per_stage", n_conv_per_stage, n, "one per stage"),
                                (f"{prefix}n_conv_per_stage_decoder", n_conv_per_stage_decoder, n - 1,
                                 "stages - 1")):
        _check_list(key, value, m, what)
        if not all(_is_int(v) and v >= 1 for v in value):
            raise ValueError(f"{key}: expected positive integers, found {value!r}")
    if norm not in NORMS:
        raise ValueError(f"{prefix}norm: expected one of {', '.join(NORMS)}, found {norm!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"{prefix}activation: expected one of {', '.join(ACTIVATIONS)}, found {activation!r}")


def deep_supervision_scales(strides: Sequence[Triple]) -> list[tuple[float, float, float]]:
    """Size of each deep-supervision output relative to the input, per axis (z, y, x).

    Output ``i`` (0 = full resolution) has the resolution of encoder stage ``i``, i.e. the
    input downsampled by the cumulative stride of stages ``0..i``.

    Args:
        strides: Per-stage (z, y, x) strides, the first being (1, 1, 1).

    Returns:
        ``len(strides) - 1`` triples, e.g. strides ``[[1,1,1], [1,2,2], [2,2,2]]`` give
        ``[(1.0, 1.0, 1.0), (1.0, 0.5, 0.5)]``.
    """
    cum = [1, 1, 1]
    scales = []
    for s in list(strides)[:-1]:
        cum = [c * int(v) for c, v in zip(cum, s)]
        scales.append(tuple(1.0 / c for c in cum))
    return scales


class PlainConvEncoder(nn.Module):
    """Stages of ``n_conv_per_stage[s]`` conv-norm-act layers, the first one strided.

    Shape:
        forward: (B, in_channels, z, y, x) → list of ``len(features_per_stage)`` skip tensors,
        highest resolution first; skip ``s`` is (B, features_per_stage[s], z / S_s, ...), with
        ``S_s`` the cumulative stride of stages 0..s.
    """

    def __init__(self, in_channels: int, features_per_stage: Sequence[int], kernel_sizes: Sequence[Triple],
                 strides: Sequence[Triple], n_conv_per_stage: Sequence[int], norm: str = "instance",
                 activation: str = "leaky_relu"):
        super().__init__()
        chans = [in_channels, *features_per_stage[:-1]]
        self.stages = nn.ModuleList(StackedConvs(n, c_in, c, k, s, norm, activation) for c_in, c, k, s, n in
                                    zip(chans, features_per_stage, kernel_sizes, strides, n_conv_per_stage))
        self.output_channels = [int(f) for f in features_per_stage]
        self.strides = [tuple(int(v) for v in s) for s in strides]
        self.kernel_sizes = [tuple(int(v) for v in k) for k in kernel_sizes]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips


class ResidualEncoder(PlainConvEncoder):
    """A conv stem, then stages of ``n_conv_per_stage[s]`` basic residual blocks (first one strided).

    Same interface and output shapes as :class:`PlainConvEncoder`.
    """

    def __init__(self, in_channels: int, features_per_stage: Sequence[int], kernel_sizes: Sequence[Triple],
                 strides: Sequence[Triple], n_conv_per_stage: Sequence[int], norm: str = "instance",
                 activation: str = "leaky_relu"):
        nn.Module.__init__(self)
        self.stem = ConvNormAct(in_channels, features_per_stage[0], kernel_sizes[0], (1, 1, 1), norm, activation)
        chans = [features_per_stage[0], *features_per_stage[:-1]]
        self.stages = nn.ModuleList(StackedResBlocks(n, c_in, c, k, s, norm, activation) for c_in, c, k, s, n in
                                    zip(chans, features_per_stage, kernel_sizes, strides, n_conv_per_stage))
        self.output_channels = [int(f) for f in features_per_stage]
        self.strides = [tuple(int(v) for v in s) for s in strides]
        self.kernel_sizes = [tuple(int(v) for v in k) for k in kernel_sizes]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return super().forward(self.stem(x))


class UNetDecoder(nn.Module):
    """Transposed-conv upsampling, skip concatenation, conv stacks and 1x1x1 segmentation heads.

    Args:
        encoder: The encoder whose ``output_channels``, ``strides`` and ``kernel_sizes`` it mirrors.
        num_outputs: Channels of each segmentation head (classes or regions).
        n_conv_per_stage: Convs per decoder stage, ``len = stages - 1``, deepest stage first
            (nnU-Net's order).
        deep_supervision: Return one output per decoder stage instead of the last one only.
    """

    def __init__(self, encoder: PlainConvEncoder, num_outputs: int, n_conv_per_stage: Sequence[int],
                 norm: str = "instance", activation: str = "leaky_relu", deep_supervision: bool = False):
        super().__init__()
        ch, n = encoder.output_channels, len(encoder.output_channels)
        self.deep_supervision = bool(deep_supervision)
        self.transpconvs, self.stages, self.seg_layers = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for s in range(1, n):  # s-th decoder stage counted from the bottleneck
            below, skip, stride = ch[-s], ch[-(s + 1)], encoder.strides[-s]
            self.transpconvs.append(nn.ConvTranspose3d(below, skip, stride, stride, bias=True))
            self.stages.append(StackedConvs(n_conv_per_stage[s - 1], 2 * skip, skip, encoder.kernel_sizes[-(s + 1)],
                                            (1, 1, 1), norm, activation))
            self.seg_layers.append(nn.Conv3d(skip, num_outputs, 1, 1, 0, bias=True))

    def forward_features(self, skips: list[torch.Tensor]) -> list[torch.Tensor]:
        """Feature pyramid: level ``i`` at encoder stage ``i``'s resolution, highest first.

        Args:
            skips: Encoder outputs, highest resolution first.

        Returns:
            ``len(skips)`` tensors: the decoder stage outputs (B, C_i, ...) for levels
            0..n-2, then the bottleneck (the last skip) as level n-1.
        """
        x, feats = skips[-1], [skips[-1]]
        for i, (up, stage) in enumerate(zip(self.transpconvs, self.stages)):
            x = stage(torch.cat((up(x), skips[-(i + 2)]), dim=1))
            feats.append(x)
        return feats[::-1]

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        """Logits (B, num_outputs, ...) at full resolution, or with deep supervision a list of
        ``stages - 1`` logits, highest resolution first."""
        x, seg = skips[-1], []
        last = len(self.stages) - 1
        for i, (up, stage) in enumerate(zip(self.transpconvs, self.stages)):
            x = stage(torch.cat((up(x), skips[-(i + 2)]), dim=1))
            if self.deep_supervision or i == last:
                seg.append(self.seg_layers[i](x))
        return seg[::-1] if self.deep_supervision else seg[-1]


class UNet(nn.Module):
    """Dynamic 3D U-Net with a plain conv encoder (nnU-Net's PlainConvUNet).

    Args:
        in_channels: Input channels (image modalities).
        num_outputs: Output channels (softmax classes incl. background, or sigmoid regions).
        features_per_stage: Channels per encoder stage, e.g. ``[32, 64, 128, 256, 320, 320]``.
        kernel_sizes: Per-stage (z, y, x) odd kernel sizes.
        strides: Per-stage (z, y, x) strides of the first conv; the first must be (1, 1, 1).
        n_conv_per_stage: Convs (resenc: residual blocks) per encoder stage.
        n_conv_per_stage_decoder: Convs per decoder stage, ``len = stages - 1``, deepest first.
        norm: ``"instance"`` | ``"batch"`` | ``"group"``.
        activation: ``"leaky_relu"`` | ``"relu"``.
        deep_supervision: Return a list of logits; settable later (``net.deep_supervision = False``
            before inference).

    Shape:
        Input (B, in_channels, z, y, x) with each size divisible by the total stride
        (product of ``strides`` per axis). Output (B, num_outputs, z, y, x), or with deep
        supervision a list of ``stages - 1`` tensors, output ``i`` of size
        ``size * deep_supervision_scales(strides)[i]``.

    Example:
        >>> net = UNet(in_channels=1, num_outputs=3, features_per_stage=[8, 16, 32],
        ...            kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3]], strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2]],
        ...            n_conv_per_stage=[2, 2, 2], n_conv_per_stage_decoder=[2, 2])
        >>> net(torch.zeros(1, 1, 4, 16, 16)).shape
        torch.Size([1, 3, 4, 16, 16])
    """

    encoder_class = PlainConvEncoder

    def __init__(self, *, in_channels: int, num_outputs: int, features_per_stage: Sequence[int],
                 kernel_sizes: Sequence[Triple], strides: Sequence[Triple], n_conv_per_stage: Sequence[int],
                 n_conv_per_stage_decoder: Sequence[int], norm: str = "instance", activation: str = "leaky_relu",
                 deep_supervision: bool = False):
        super().__init__()
        for key, v in (("in_channels", in_channels), ("num_outputs", num_outputs)):
            if not _is_int(v) or v < 1:
                raise ValueError(f"{key}: expected a positive integer, found {v!r}")
        check_topology(features_per_stage, kernel_sizes, strides, n_conv_per_stage, n_conv_per_stage_decoder,
                       norm, activation)
        self.in_channels, self.num_outputs = in_channels, num_outputs
        self.encoder = self.encoder_class(in_channels, features_per_stage, kernel_sizes, strides, n_conv_per_stage,
                                          norm, activation)
        self.decoder = UNetDecoder(self.encoder, num_outputs, n_conv_per_stage_decoder, norm, activation,
                                   deep_supervision)
        self.apply(init_weights)

    @property
    def deep_supervision(self) -> bool:
        """Whether ``forward`` returns the list of deep-supervision outputs."""
        return self.decoder.deep_supervision

    @deep_supervision.setter
    def deep_supervision(self, value: bool) -> None:
        self.decoder.deep_supervision = bool(value)

    @property
    def feature_channels(self) -> list[int]:
        """Channels of each level of :meth:`forward_features`, highest resolution first."""
        return list(self.encoder.output_channels)

    @property
    def feature_strides(self) -> list[tuple[int, int, int]]:
        """Cumulative (z, y, x) stride of each feature level relative to the input."""
        cum, out = (1, 1, 1), []
        for s in self.encoder.strides:
            cum = tuple(c * v for c, v in zip(cum, s))
            out.append(cum)
        return out

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (B, {self.in_channels}, z, y, x), found {tuple(x.shape)}")
        total = self.feature_strides[-1]
        if any(n % t for n, t in zip(x.shape[2:], total)):
            raise ValueError(f"input size {tuple(x.shape[2:])} is not divisible by the network's total "
                             f"stride {total} (z, y, x)")

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Decoder feature pyramid (see :meth:`UNetDecoder.forward_features`); for detectors."""
        self._check_input(x)
        return self.decoder.forward_features(self.encoder(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        self._check_input(x)
        return self.decoder(self.encoder(x))


register_network("unet")(UNet)


@register_network("resenc_unet")
class ResEncUNet(UNet):
    """U-Net with a residual encoder (nnU-Net's ResidualEncoderUNet).

    Same arguments and shapes as :class:`UNet`; ``n_conv_per_stage`` counts basic residual
    blocks (two convs each) per encoder stage, after a one-conv stem. The decoder is plain.
    """

    encoder_class = ResidualEncoder


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of ``module``."""
    return int(sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only))

