"""Segmentation losses: soft Dice + cross-entropy, sigmoid region variant, deep supervision.

After nnU-Net's ``DC_and_CE_loss`` / ``DC_and_BCE_loss`` / ``DeepSupervisionWrapper``.
Written by hand rather than with ``monai.losses.DiceCELoss`` because we need nnU-Net's
ignore-label masking, its empty-target behaviour and its deep-supervision weighting;
the tests check the Dice term against ``monai.losses.DiceLoss``.

Dice terms are ``1 - dice`` (nnU-Net uses ``-dice``; the gradients are identical), so a
perfect prediction has loss ~0 and every loss here is >= 0.

Targets:
    * softmax mode: integer label maps (B, 1, z, y, x), any integer dtype;
    * sigmoid (region) mode: binary (B, R, z, y, x) region masks, or, when the loss was
      given ``regions``, integer label maps (B, 1, z, y, x) that it converts with
      :func:`labels_to_regions`.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

Regions = Mapping[str, Sequence[int]] | Sequence[Sequence[int]]

_LOSSES: dict[str, Callable[..., nn.Module]] = {}


def register_loss(name: str):
    """Decorator registering a loss builder ``fn(loss_cfg, mode, regions) -> nn.Module`` under ``name``."""

    def decorator(fn):
        if name in _LOSSES:
            raise ValueError(f"loss {name!r} is already registered")
        _LOSSES[name] = fn
        return fn

    return decorator


def list_losses() -> list[str]:
    """Sorted names of the registered losses (``training.loss.name`` in plans.json)."""
    return sorted(_LOSSES)


def default_deep_supervision_weights(n_outputs: int) -> list[float]:
    """nnU-Net's deep-supervision weights: ``1 / 2**i``, lowest resolution 0, normalized to sum 1.

    Args:
        n_outputs: Number of network outputs (``stages - 1``), highest resolution first.

    Returns:
        ``n_outputs`` weights; ``[1.0]`` for a single output. E.g. 3 → ``[0.667, 0.333, 0.0]``.
    """
    if n_outputs < 1:
        raise ValueError(f"n_outputs: expected at least 1, found {n_outputs}")
    w = [1.0 / 2 ** i for i in range(n_outputs)]
    if n_outputs > 1:
        w[-1] = 0.0
    total = sum(w)
    return [v / total for v in w]


def labels_to_regions(target: torch.Tensor, regions: Regions) -> torch.Tensor:
    """Label map → one binary mask per region (a region is a set of label values).

    Args:
        target: (B, 1, z, y, x) integer label map.
        regions: ``{"name": [values]}`` (plans' ``outputs.regions``, in order) or a list of
            value lists.

    Returns:
        (B, R, z, y, x) float tensor of 0/1.
    """
    groups = list(regions.values()) if isinstance(regions, Mapping) else list(regions)
    values = [torch.as_tensor(list(g), device=target.device, dtype=target.dtype) for g in groups]
    return torch.cat([torch.isin(target, v) for v in values], dim=1).float()


def soft_dice(probs: torch.Tensor, onehot: torch.Tensor, mask: torch.Tensor | None = None,
              batch_dice: bool = True, smooth: float = 1e-5) -> torch.Tensor:
    """Soft Dice per channel: ``(2 * sum(p * g) + smooth) / max(sum(p) + sum(g) + smooth, 1e-8)``.

    An empty channel (no target, no prediction) scores 1, never NaN.

    Args:
        probs: (B, C, z, y, x) probabilities.
        onehot: (B, C, z, y, x) binary targets.
        mask: Optional (B, 1, z, y, x) 0/1 voxels to count (ignore label).
        batch_dice: Sum over the batch as well (one Dice per channel) instead of per sample;
            in a distributed run over the batches of every rank.
        smooth: Added to numerator and denominator.

    Returns:
        (C,) with ``batch_dice``, else (B, C).
    """
    if mask is not None:
        probs, onehot = probs * mask, onehot * mask
    axes = (0, 2, 3, 4) if batch_dice else (2, 3, 4)
    intersect = (probs * onehot).sum(axes)
    denom = probs.sum(axes) + onehot.sum(axes)
    if batch_dice:
        intersect, denom = _sum_over_ranks(torch.stack((intersect, denom))).unbind(0)
    return (2 * intersect + smooth) / torch.clamp(denom + smooth, min=1e-8)


def _sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over the ranks of a distributed run, differentiably (the batch Dice of DDP
    training is then the Dice of the global batch, as in one process); ``t`` itself otherwise.

    Every rank computes the same global Dice; the gradient each rank's backward sends through
    the sum is W × its own share, and DDP's mean over the W ranks gives the one-process gradient.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return t
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(t, op=dist.ReduceOp.SUM)


def _check_shapes(logits: torch.Tensor, target: torch.Tensor, channels: int) -> None:
    if logits.dim() != 5 or target.dim() != 5 or target.shape[0] != logits.shape[0] \
            or target.shape[2:] != logits.shape[2:] or target.shape[1] != channels:
        raise ValueError(f"loss: expected logits (B, C, z, y, x) and target (B, {channels}, z, y, x) of the "
                         f"same size, found {tuple(logits.shape)} and {tuple(target.shape)}")


class DiceCELoss(nn.Module):
    """``weight_ce * CE + weight_dice * (1 - soft Dice on softmax)`` (nnU-Net's DC_and_CE_loss).

    Args:
        batch_dice: One Dice per class over the whole batch (nnU-Net's 3D default).
        smooth: Dice smoothing term.
        do_bg: Include the background class (channel 0) in the Dice term.
        weight_ce, weight_dice: Term weights (nnU-Net: 1 and 1).
        ignore_label: Label value excluded from both terms (not a network output).

    Shape:
        logits (B, C, z, y, x), target (B, 1, z, y, x) integer labels in ``[0, C)`` (or the
        ignore label) → scalar.
    """

    def __init__(self, batch_dice: bool = True, smooth: float = 1e-5, do_bg: bool = False,
                 weight_ce: float = 1.0, weight_dice: float = 1.0, ignore_label: int | None = None):
        super().__init__()
        self.batch_dice, self.smooth, self.do_bg = batch_dice, smooth, do_bg
        self.weight_ce, self.weight_dice, self.ignore_label = weight_ce, weight_dice, ignore_label

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_shapes(logits, target, 1)
        logits, target = logits.float(), target.long()
        mask = None
        if self.ignore_label is not None:
            mask = target != self.ignore_label
            target = torch.where(mask, target, torch.zeros_like(target))
        loss = logits.new_zeros(())
        if self.weight_ce:
            ce = F.cross_entropy(logits, target[:, 0], reduction="none")
            if mask is None:
                loss = loss + self.weight_ce * ce.mean()
            else:  # mean over counted voxels; 0 (not NaN) when every voxel is ignored
                m = mask[:, 0]
                loss = loss + self.weight_ce * (ce * m).sum() / m.sum().clamp(min=1)
        if self.weight_dice:
            probs = torch.softmax(logits, 1)
            onehot = torch.zeros_like(probs).scatter_(1, target, 1.0)
            if not self.do_bg:
                probs, onehot = probs[:, 1:], onehot[:, 1:]
            dice = soft_dice(probs, onehot, None if mask is None else mask.float(), self.batch_dice, self.smooth)
            loss = loss + self.weight_dice * (1 - dice.mean())
        return loss


class DiceBCELoss(nn.Module):
    """``weight_bce * BCE + weight_dice * (1 - soft Dice on sigmoid)`` per region (nnU-Net's DC_and_BCE_loss).

    For overlapping label regions (e.g. BraTS whole tumour / tumour core / enhancing): each
    output channel is an independent sigmoid, and every channel counts in the Dice term.

    Args:
        batch_dice, smooth, weight_bce, weight_dice: As in :class:`DiceCELoss`.
        regions: When given, targets are label maps (B, 1, z, y, x) converted with
            :func:`labels_to_regions`; else targets are binary (B, R, z, y, x).
        ignore_label: With ``regions``: label value whose voxels count in neither term.

    Shape:
        logits (B, R, z, y, x) → scalar.
    """

    def __init__(self, batch_dice: bool = True, smooth: float = 1e-5, weight_bce: float = 1.0,
                 weight_dice: float = 1.0, regions: Regions | None = None, ignore_label: int | None = None):
        super().__init__()
        if ignore_label is not None and regions is None:
            raise ValueError("ignore_label: needs regions (label-map targets) in region mode")
        self.batch_dice, self.smooth, self.weight_bce, self.weight_dice = batch_dice, smooth, weight_bce, weight_dice
        self.regions, self.ignore_label = regions, ignore_label

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, mask = logits.float(), None
        if self.regions is not None:
            _check_shapes(logits, target, 1)
            if self.ignore_label is not None:
                mask = (target != self.ignore_label).float()
            target = labels_to_regions(target, self.regions)
        _check_shapes(logits, target, logits.shape[1])
        target = target.float()
        loss = logits.new_zeros(())
        if self.weight_bce:
            bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
            if mask is None:
                loss = loss + self.weight_bce * bce.mean()
            else:
                counted = mask.sum() * logits.shape[1]
                loss = loss + self.weight_bce * (bce * mask).sum() / counted.clamp(min=1)
        if self.weight_dice:
            dice = soft_dice(torch.sigmoid(logits), target, mask, self.batch_dice, self.smooth)
            loss = loss + self.weight_dice * (1 - dice.mean())
        return loss


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of ``loss`` over deep-supervision outputs (nnU-Net's DeepSupervisionWrapper).

    Args:
        loss: Loss of one (logits, target) pair.
        weights: One weight per output, highest resolution first; None uses
            :func:`default_deep_supervision_weights` for however many outputs arrive.
            Outputs whose weight is 0 are still scored (times 0): every segmentation head
            then takes part in the graph and gets a zero gradient, which DDP requires (nnU-Net
            skips them and works around DDP's unused-parameter error with a weight of 1e-6).

    Shape:
        outputs: list of (B, C, z_i, y_i, x_i); targets: list of matching targets → scalar.
        A single tensor output (deep supervision off) is scored against the tensor target
        or the first target of a list.
    """

    def __init__(self, loss: nn.Module, weights: Sequence[float] | None = None):
        super().__init__()
        self.loss = loss
        self.weights = None if weights is None else [float(w) for w in weights]

    def forward(self, outputs: torch.Tensor | Sequence[torch.Tensor],
                targets: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return self.loss(outputs, targets[0] if isinstance(targets, (list, tuple)) else targets)
        if isinstance(targets, torch.Tensor) or len(targets) != len(outputs):
            found = "one tensor" if isinstance(targets, torch.Tensor) else f"{len(targets)}"
            raise ValueError(f"deep supervision: expected {len(outputs)} targets (one per output), found {found}")
        weights = self.weights or default_deep_supervision_weights(len(outputs))
        if len(weights) != len(outputs):
            raise ValueError(f"deep_supervision_weights: expected {len(outputs)} weights (one per network output), "
                             f"found {len(weights)}")
        terms = [w * self.loss(o, t) for w, o, t in zip(weights, outputs, targets)]
        return torch.stack(terms).sum()


@register_loss("dice_ce")
def _dice_ce(loss_cfg: dict, mode: str, regions: Regions | None) -> nn.Module:
    """Dice + CE (softmax) or Dice + BCE (sigmoid regions)."""
    common = dict(batch_dice=bool(loss_cfg.get("batch_dice", True)), smooth=float(loss_cfg.get("smooth", 1e-5)),
                  weight_dice=float(loss_cfg.get("weight_dice", 1.0)), ignore_label=loss_cfg.get("ignore_label"))
    if mode == "sigmoid":
        return DiceBCELoss(weight_bce=float(loss_cfg.get("weight_ce", 1.0)), regions=regions, **common)
    return DiceCELoss(do_bg=bool(loss_cfg.get("do_bg", False)), weight_ce=float(loss_cfg.get("weight_ce", 1.0)),
                      **common)


def build_loss(loss_cfg: dict, mode: str | None = None, deep_supervision: bool = False,
               regions: Regions | None = None) -> nn.Module:
    """Build the training loss a plan's ``training.loss`` describes.

    Args:
        loss_cfg: ``{"name": "dice_ce", ...}``; optional keys ``region_based`` (bool),
            ``deep_supervision_weights`` (list), ``batch_dice`` (default true), ``smooth``
            (1e-5), ``do_bg`` (false), ``weight_ce`` / ``weight_dice`` (1, 1), ``ignore_label``.
        mode: ``"softmax"`` or ``"sigmoid"`` (plans' ``outputs.mode``); None follows
            ``region_based``.
        deep_supervision: Wrap in :class:`DeepSupervisionLoss` (network returns a list).
        regions: Plans' ``outputs.regions``; in sigmoid mode, targets are then label maps.

    Returns:
        ``loss(outputs, targets) -> scalar`` module.

    Raises:
        ValueError: Unknown name or mode, or ``region_based`` contradicting ``mode``.

    Example:
        >>> loss = build_loss({"name": "dice_ce"}, mode="softmax", deep_supervision=True)
    """
    name = loss_cfg.get("name")
    if name not in _LOSSES:
        raise ValueError(f"training.loss.name: unknown loss {name!r}; registered: {', '.join(list_losses())}")
    region_based = loss_cfg.get("region_based")
    if mode is None:
        mode = "sigmoid" if region_based else "softmax"
    if mode not in ("softmax", "sigmoid"):
        raise ValueError(f"mode: expected 'softmax' or 'sigmoid', found {mode!r}")
    if region_based is not None and bool(region_based) != (mode == "sigmoid"):
        raise ValueError(f"training.loss.region_based: {region_based} contradicts outputs mode {mode!r}")
    loss = _LOSSES[name](loss_cfg, mode, regions)
    if deep_supervision:
        loss = DeepSupervisionLoss(loss, loss_cfg.get("deep_supervision_weights"))
    return loss
