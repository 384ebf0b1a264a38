"""Retina U-Net (Jaeger et al., 2018; nnDetection's main model): a U-Net with detection heads.

The plan-built :class:`~volseg.networks.unet.UNet` is the backbone: its encoder and decoder
give a feature pyramid (level ``l`` at the cumulative stride of stages ``0..l``, 0 = full
resolution) and its own 1x1x1 heads give the segmentation logits (with deep supervision).
On the chosen ``detection_levels`` a RetinaNet-style classification head and box-regression
head, shared across levels, predict per feature cell and anchor:

* ``num_classes`` sigmoid logits (foreground classes, no background channel);
* 6 box deltas in the order ``(dz, dy, dx, dd, dh, dw)``: centre offsets along z, y, x
  divided by the anchor's extent (d = depth along z, h = height along y, w = width along x),
  then the log-ratios of the extents along z, y, x.

Channel layout of a head map: anchor major, value minor, i.e. channel ``a * num_classes + k``
(class ``k`` of anchor ``a``) and ``a * 6 + j`` (delta ``j`` of anchor ``a``), as in
MONAI's ``RetinaNet``.

Flattened ordering (:func:`flatten_level_outputs`, :func:`anchor_boxes`): detection levels
in the given order (finest first), then feature cells in C order over (z, y, x) (z slowest),
then anchors: index ``n = offset_l + ((iz * Y_l + iy) * X_l + ix) * A + a``. This is MONAI's
``AnchorGenerator`` ordering ("ij" indexing over the tensor axes). Anchor centres follow the
half-open voxel convention of :mod:`volseg.detection.boxes`: the cell ``(iz, iy, ix)`` of a
level with stride ``s`` covers voxels ``[i * s, (i + 1) * s)`` per axis, so its centre is
``(i + 0.5) * s`` (MONAI uses ``i * s + s // 2``; the two agree for even strides).
"""

from __future__ import annotations

import math
import numbers
from typing import Sequence

import torch
from torch import nn

from volseg.networks.blocks import ConvNormAct, init_weights
from volseg.networks.registry import register_network
from volseg.networks.unet import Triple, UNet, check_topology

BOX_DELTAS = ("dz", "dy", "dx", "dd", "dh", "dw")
PRIOR_PROBABILITY = 0.01


def _is_count(v, minimum: int = 1) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= minimum


def _check_positive_int(key: str, value, minimum: int = 1) -> None:
    if not _is_count(value, minimum):
        raise ValueError(f"{key}: expected an integer >= {minimum}, found {value!r}")


def _check_detection_levels(detection_levels, n_levels: int) -> list[int]:
    ok = isinstance(detection_levels, (list, tuple)) and len(detection_levels) > 0 and all(
        _is_count(v, 0) and v < n_levels for v in detection_levels)
    if not ok or list(detection_levels) != sorted(set(detection_levels)):
        raise ValueError(f"detection_levels: expected a non-empty, strictly increasing list of level indices in "
                         f"[0, {n_levels - 1}] (0 = full resolution, {n_levels} levels), found {detection_levels!r}")
    return [int(v) for v in detection_levels]


def _resolve_classes(num_outputs: int | None, num_classes: int | None) -> tuple[int, int]:
    """(num_outputs, num_classes) with ``num_outputs = num_classes + 1`` (background)."""
    if num_outputs is None and num_classes is None:
        raise ValueError("num_classes: expected the number of foreground classes (or num_outputs = classes + 1)")
    if num_classes is not None:
        _check_positive_int("num_classes", num_classes)
    if num_outputs is not None:
        _check_positive_int("num_outputs", num_outputs, minimum=2)
    num_classes = num_outputs - 1 if num_classes is None else num_classes
    num_outputs = num_classes + 1 if num_outputs is None else num_outputs
    if num_outputs != num_classes + 1:
        raise ValueError(f"num_outputs: the segmentation head has the foreground classes plus background, expected "
                         f"num_classes + 1 = {num_classes + 1}, found {num_outputs}")
    return num_outputs, num_classes


class DetectionHead(nn.Module):
    """A conv tower shared across levels, after a per-level 1x1x1 projection.

    Args:
        in_channels: C_l of each level; level ``l`` gets its own 1x1x1 conv ``C_l → channels``.
        channels: Width of the shared tower.
        out_channels: Output channels (A * K logits or A * 6 deltas).
        num_convs: Shared 3x3x3 conv → GroupNorm → ``activation`` layers before the output conv.
        bias: Initial bias of the output conv (3x3x3, weights normal with std 0.01).

    Shape:
        forward: list of (B, C_l, z_l, y_l, x_l) → list of (B, out_channels, z_l, y_l, x_l).
    """

    def __init__(self, in_channels: Sequence[int], channels: int, out_channels: int, num_convs: int,
                 activation: str = "leaky_relu", bias: float = 0.0):
        super().__init__()
        self.projections = nn.ModuleList(nn.Conv3d(c, channels, 1, bias=True) for c in in_channels)
        self.tower = nn.Sequential(*[ConvNormAct(channels, channels, (3, 3, 3), (1, 1, 1), "group", activation)
                                     for _ in range(num_convs)])
        self.out = nn.Conv3d(channels, out_channels, 3, padding=1, bias=True)
        self.apply(init_weights)
        nn.init.normal_(self.out.weight, std=0.01)
        nn.init.constant_(self.out.bias, bias)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [self.out(self.tower(proj(f))) for proj, f in zip(self.projections, features)]


@register_network("retina_unet")
class RetinaUNet(nn.Module):
    """Retina U-Net: plan-built U-Net backbone, segmentation output and shared detection heads.

    Args:
        in_channels: Input channels (image modalities).
        num_classes: Foreground classes of the detector; defaults to ``num_outputs - 1``.
        num_outputs: Segmentation channels, foreground classes plus background (softmax);
            defaults to ``num_classes + 1``; one of the two is required.
        features_per_stage, kernel_sizes, strides, n_conv_per_stage, n_conv_per_stage_decoder,
            norm, activation: The U-Net topology, as for :class:`~volseg.networks.unet.UNet`.
        deep_supervision: ``"seg"`` is the list of deep-supervision logits; settable later.
        detection_levels: Strictly increasing pyramid levels carrying the heads; level ``l``
            has the cumulative stride of stages ``0..l`` (``feature_strides[l]``).
        num_anchors: Anchors per feature cell (the same at every level).
        head_channels: Width of the head towers (GroupNorm with ``gcd(head_channels, 8)`` groups).
        head_convs: 3x3x3 conv-norm-act layers per tower before the output conv.
        prior_probability: π of the classifier's bias ``-log((1 - π) / π)``: sigmoid ≈ π at init.

    Shape:
        Input (B, in_channels, Z, Y, X), each size divisible by the total stride. Output dict:

        * ``"seg"``: (B, num_outputs, Z, Y, X) logits, or with deep supervision a list of
          ``stages - 1`` logits, highest resolution first (as :class:`UNet`);
        * ``"cls"``: per detection level (B, A * num_classes, z_l, y_l, x_l) sigmoid logits;
        * ``"box"``: per detection level (B, A * 6, z_l, y_l, x_l) deltas (``BOX_DELTAS``);

        with ``(z_l, y_l, x_l) = (Z, Y, X) / feature_strides[l]``, A = ``num_anchors``.

    Example:
        >>> net = RetinaUNet(in_channels=1, num_classes=2, features_per_stage=[4, 8, 16],
        ...                  kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3]],
        ...                  strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2]], n_conv_per_stage=[1, 1, 1],
        ...                  n_conv_per_stage_decoder=[1, 1], detection_levels=[1, 2], num_anchors=3,
        ...                  head_channels=8)
        >>> out = net(torch.zeros(1, 1, 4, 16, 16))
        >>> [tuple(c.shape) for c in out["cls"]]
        [(1, 6, 4, 8, 8), (1, 6, 2, 4, 4)]
    """

    backbone_class = UNet

    def __init__(self, *, in_channels: int, features_per_stage: Sequence[int], kernel_sizes: Sequence[Triple],
                 strides: Sequence[Triple], n_conv_per_stage: Sequence[int], n_conv_per_stage_decoder: Sequence[int],
                 detection_levels: Sequence[int], num_anchors: int, num_classes: int | None = None,
                 num_outputs: int | None = None, norm: str = "instance", activation: str = "leaky_relu",
                 deep_supervision: bool = False, head_channels: int = 64, head_convs: int = 2,
                 prior_probability: float = PRIOR_PROBABILITY):
        super().__init__()
        check_topology(features_per_stage, kernel_sizes, strides, n_conv_per_stage, n_conv_per_stage_decoder,
                       norm, activation)
        num_outputs, num_classes = _resolve_classes(num_outputs, num_classes)
        self.detection_levels = _check_detection_levels(detection_levels, len(features_per_stage))
        _check_positive_int("num_anchors", num_anchors)
        _check_positive_int("head_channels", head_channels)
        _check_positive_int("head_convs", head_convs, minimum=0)
        p = prior_probability
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p < 1.0:
            raise ValueError(f"prior_probability: expected a number in (0, 1), found {p!r}")
        self.backbone = self.backbone_class(
            in_channels=in_channels, num_outputs=num_outputs, features_per_stage=features_per_stage,
            kernel_sizes=kernel_sizes, strides=strides, n_conv_per_stage=n_conv_per_stage,
            n_conv_per_stage_decoder=n_conv_per_stage_decoder, norm=norm, activation=activation,
            deep_supervision=deep_supervision)
        self.in_channels, self.num_outputs, self.num_classes = in_channels, num_outputs, num_classes
        self.num_anchors = num_anchors
        chans = [self.backbone.feature_channels[i] for i in self.detection_levels]
        prior_bias = -math.log((1.0 - p) / p)
        self.cls_head = DetectionHead(chans, head_channels, num_anchors * num_classes, head_convs, activation,
                                      prior_bias)
        self.box_head = DetectionHead(chans, head_channels, num_anchors * len(BOX_DELTAS), head_convs, activation)

    @property
    def deep_supervision(self) -> bool:
        """Whether ``"seg"`` is the list of deep-supervision outputs (False for inference)."""
        return self.backbone.deep_supervision

    @deep_supervision.setter
    def deep_supervision(self, value: bool) -> None:
        self.backbone.deep_supervision = bool(value)

    @property
    def encoder(self) -> nn.Module:
        """The backbone's encoder (:class:`~volseg.networks.unet.PlainConvEncoder`)."""
        return self.backbone.encoder

    @property
    def decoder(self) -> nn.Module:
        """The backbone's decoder (:class:`~volseg.networks.unet.UNetDecoder`)."""
        return self.backbone.decoder

    @property
    def feature_channels(self) -> list[int]:
        """Channels of every pyramid level, highest resolution first."""
        return self.backbone.feature_channels

    @property
    def feature_strides(self) -> list[tuple[int, int, int]]:
        """Cumulative (z, y, x) stride of every pyramid level relative to the input."""
        return self.backbone.feature_strides

    @property
    def detection_strides(self) -> list[tuple[int, int, int]]:
        """Cumulative (z, y, x) stride of every detection level, in ``detection_levels`` order."""
        return [self.feature_strides[i] for i in self.detection_levels]

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Decoder feature maps of every level (B, C_l, z_l, y_l, x_l), highest resolution first."""
        return self.backbone.forward_features(x)

    def _seg_outputs(self, feats: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        """The backbone decoder's segmentation logits from its decoder feature maps."""
        heads = self.decoder.seg_layers  # index i: decoder stage i counted from the bottleneck
        last = len(heads) - 1
        if not self.deep_supervision:
            return heads[last](feats[0])
        return [heads[last - level](feats[level]) for level in range(len(heads))]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """Segmentation logits and per-level head maps; see the class docstring for shapes.

        Raises:
            ValueError: ``x`` is not (B, in_channels, Z, Y, X) or not divisible by the total stride.
        """
        feats = self.forward_features(x)
        det = [feats[i] for i in self.detection_levels]
        return {"seg": self._seg_outputs(feats), "cls": self.cls_head(det), "box": self.box_head(det)}

    def flatten_outputs(self, out: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`flatten_level_outputs` of ``out["cls"]`` and ``out["box"]`` with this network's anchors."""
        return flatten_level_outputs(out["cls"], out["box"], self.num_anchors)

    def check_anchors(self, anchors: dict) -> None:
        """Raise unless ``anchors`` (plan format) matches the detection levels and anchor count.

        Raises:
            ValueError: Another number of levels, a level stride other than
                ``detection_strides``, or another number of shapes than ``num_anchors``.
        """
        levels = _check_anchor_plan(anchors)
        if len(levels) != len(self.detection_levels):
            raise ValueError(f"anchors: expected {len(self.detection_levels)} levels (detection_levels "
                             f"{self.detection_levels}), found {len(levels)}")
        for i, (level, stride) in enumerate(zip(levels, self.detection_strides)):
            if [int(v) for v in level["stride"]] != list(stride):
                raise ValueError(f"anchors.levels[{i}].stride: expected {list(stride)} (level "
                                 f"{self.detection_levels[i]}), found {level['stride']}")
            if len(level["shapes"]) != self.num_anchors:
                raise ValueError(f"anchors.levels[{i}].shapes: expected {self.num_anchors} shapes (num_anchors), "
                                 f"found {len(level['shapes'])}")


def flatten_level_outputs(cls_maps: Sequence[torch.Tensor], box_maps: Sequence[torch.Tensor],
                          num_anchors: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate per-level head maps into one row per anchor.

    Args:
        cls_maps: Per level (B, A * K, z_l, y_l, x_l), channel ``a * K + k``.
        box_maps: Per level (B, A * 6, z_l, y_l, x_l), channel ``a * 6 + j``.
        num_anchors: A, anchors per feature cell.

    Returns:
        ``(cls, box)``: (B, N, K) and (B, N, 6) with ``N = sum_l z_l * y_l * x_l * A``, rows in
        the module's ordering (level, then cell in C order over z, y, x, then anchor), the
        same as :func:`anchor_boxes`.

    Raises:
        ValueError: Different numbers of levels, non-5D maps, channels not a multiple of A
            (classes) or not A * 6 (boxes), or cls and box maps of different sizes.
    """
    _check_positive_int("num_anchors", num_anchors)
    if len(cls_maps) != len(box_maps) or len(cls_maps) == 0:
        raise ValueError(f"expected the same positive number of cls and box levels, found {len(cls_maps)} and "
                         f"{len(box_maps)}")
    cls_rows, box_rows = [], []
    for i, (c, b) in enumerate(zip(cls_maps, box_maps)):
        if c.dim() != 5 or b.dim() != 5 or c.shape[0] != b.shape[0] or c.shape[2:] != b.shape[2:]:
            raise ValueError(f"level {i}: expected cls and box maps (B, C, z, y, x) of the same B and size, found "
                             f"{tuple(c.shape)} and {tuple(b.shape)}")
        if c.shape[1] % num_anchors or b.shape[1] != num_anchors * len(BOX_DELTAS):
            raise ValueError(f"level {i}: expected A * K cls and A * 6 box channels with A = {num_anchors}, found "
                             f"{c.shape[1]} and {b.shape[1]}")
        cls_rows.append(head_rows(c, num_anchors))
        box_rows.append(head_rows(b, num_anchors))
    return torch.cat(cls_rows, dim=1), torch.cat(box_rows, dim=1)


def head_rows(head_map: torch.Tensor, num_anchors: int) -> torch.Tensor:
    """One level's (B, A * V, z, y, x) head map → (B, z * y * x * A, V) rows, cell major, anchor minor
    (the ordering of :func:`flatten_level_outputs`); any dtype."""
    b, c, z, y, x = head_map.shape
    v = c // num_anchors
    return head_map.view(b, num_anchors, v, z, y, x).permute(0, 3, 4, 5, 1, 2).reshape(b, -1, v)


def level_shapes(patch_size: Sequence[int], strides: Sequence[Sequence[int]]) -> list[tuple[int, int, int]]:
    """Feature-map size (z_l, y_l, x_l) of each level for an input patch.

    Args:
        patch_size: Input (Z, Y, X) in voxels.
        strides: Cumulative (z, y, x) stride of each level, e.g. ``net.detection_strides``.

    Raises:
        ValueError: ``patch_size`` is not 3 positive integers, or not divisible by a stride.

    Example:
        >>> level_shapes((16, 32, 32), [(1, 2, 2), (2, 4, 4)])
        [(16, 16, 16), (8, 8, 8)]
    """
    if not isinstance(patch_size, Sequence) or len(patch_size) != 3 or not all(_is_count(n) for n in patch_size):
        raise ValueError(f"patch_size: expected 3 positive integers (z, y, x), found {patch_size!r}")
    shapes = []
    for s in strides:
        if len(s) != 3 or not all(_is_count(v) for v in s) or any(int(n) % int(v) for n, v in zip(patch_size, s)):
            raise ValueError(f"patch_size: {tuple(patch_size)} is not divisible by the level stride {tuple(s)}")
        shapes.append(tuple(int(n) // int(v) for n, v in zip(patch_size, s)))
    return shapes


def anchor_centres(feature_shape: Sequence[int], stride: Sequence[int]) -> torch.Tensor:
    """Centres of the cells of one level in input voxels (half-open convention).

    Args:
        feature_shape: (z_l, y_l, x_l) cells.
        stride: Cumulative (z, y, x) stride of the level.

    Returns:
        float32 (z_l * y_l * x_l, 3) centres (z, y, x), ``(i + 0.5) * stride`` per axis, cells in
        C order (z slowest).

    Example:
        >>> anchor_centres((1, 1, 2), (2, 4, 4)).tolist()
        [[1.0, 2.0, 2.0], [1.0, 2.0, 6.0]]
    """
    axes = [(torch.arange(int(n), dtype=torch.float32) + 0.5) * float(s) for n, s in zip(feature_shape, stride)]
    return torch.stack([g.reshape(-1) for g in torch.meshgrid(*axes, indexing="ij")], dim=1)


def anchor_boxes(patch_size: Sequence[int], anchors: dict) -> torch.Tensor:
    """Every anchor box of a patch, in the ordering of :func:`flatten_level_outputs`.

    Args:
        patch_size: Input (Z, Y, X) in voxels.
        anchors: Anchor plan as :func:`volseg.planning.anchors.plan_anchors` writes it:
            ``{"levels": [{"stride": [z, y, x], "shapes": [[z, y, x], ...]}, ...]}``, levels in
            ``detection_levels`` order, shapes (extents) in full-resolution voxels.

    Returns:
        float32 (N, 6) boxes (z0, y0, x0, z1, y1, x1) in input voxels, each centred on its
        cell: ``centre ± shape / 2``; ``N = sum_l z_l * y_l * x_l * A_l``.

    Raises:
        ValueError: A malformed plan, or a patch not divisible by a level's stride.

    Example:
        >>> anchor_boxes((2, 4, 4), {"levels": [{"stride": [2, 4, 4], "shapes": [[2, 2, 2]]}]}).tolist()
        [[0.0, 1.0, 1.0, 2.0, 3.0, 3.0]]
    """
    levels = _check_anchor_plan(anchors)
    shapes = level_shapes(patch_size, [level["stride"] for level in levels])
    out = []
    for level, shape in zip(levels, shapes):
        centres = anchor_centres(shape, level["stride"])[:, None, :]               # (P, 1, 3)
        half = torch.as_tensor(level["shapes"], dtype=torch.float32)[None] / 2.0   # (1, A, 3)
        out.append(torch.cat((centres - half, centres + half), dim=2).reshape(-1, 6))
    return torch.cat(out, dim=0)


def _is_extent(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _check_anchor_plan(anchors: dict) -> list[dict]:
    levels = anchors.get("levels") if isinstance(anchors, dict) else None
    if not isinstance(levels, (list, tuple)) or len(levels) == 0:
        raise ValueError(f"anchors: expected {{'levels': [{{'stride': [z, y, x], 'shapes': [[z, y, x], ...]}}]}}, "
                         f"found {anchors!r}")
    for i, level in enumerate(levels):
        stride, shapes = (level.get("stride"), level.get("shapes")) if isinstance(level, dict) else (None, None)
        if not (isinstance(stride, (list, tuple)) and len(stride) == 3 and all(_is_count(v) for v in stride)):
            raise ValueError(f"anchors.levels[{i}].stride: expected 3 positive integers (z, y, x), found {stride!r}")
        ok = isinstance(shapes, (list, tuple)) and len(shapes) > 0 and all(
            isinstance(s, (list, tuple)) and len(s) == 3 and all(_is_extent(v) for v in s) for s in shapes)
        if not ok:
            raise ValueError(f"anchors.levels[{i}].shapes: expected a non-empty list of positive (z, y, x) extents, "
                             f"found {shapes!r}")
    return list(levels)
