"""nnU-Net state dicts (``PlainConvUNet`` / ``ResidualEncoderUNet``) → volseg ``unet`` / ``resenc_unet``.

The two module trees differ in names only. nnU-Net's conv layer is a module holding ``conv``
and ``norm`` (and ``all_modules``, a sequence of the same modules, so every parameter has two
names), its decoder keeps a reference to the encoder (``decoder.encoder.*`` repeats
``encoder.*``), and its stages wrap their layers in ``convs`` / ``blocks``. volseg's conv
layer is a sequence (conv, norm, nonlinearity):

==========================================================  ==============================================
nnU-Net                                                     volseg
==========================================================  ==============================================
``encoder.stages.S.0.convs.I.{conv,norm}.P`` (plain)        ``encoder.stages.S.I.{0,1}.P``
``encoder.stem.convs.0.{conv,norm}.P`` (residual)           ``encoder.stem.{0,1}.P``
``encoder.stages.S.blocks.B.conv{1,2}.{conv,norm}.P``       ``encoder.stages.S.B.conv{1,2}.{0,1}.P``
``encoder.stages.S.blocks.B.skip.K.{conv,norm}.P``          ``encoder.stages.S.B.skip.K.{0,1}.P``
``decoder.stages.S.convs.I.{conv,norm}.P``                  ``decoder.stages.S.I.{0,1}.P``
``decoder.transpconvs.S.P``, ``decoder.seg_layers.S.P``     the same
==========================================================  ==============================================

Every volseg parameter is looked up under its nnU-Net name and its shape checked; every
nnU-Net entry must be used (or be a second name of a used one, holding the same values).
Conv biases that nnU-Net's network does not have (``conv_bias`` false; the residual skip's
1×1×1 conv never has one) become zeros, the weight and bias of non-affine norms ones and
zeros: the same function.
"""

from __future__ import annotations

import os
import re
from typing import Sequence

import torch
from torch import nn

from volseg.errors import ModelError
from volseg.importers.nnunet_axes import IDENTITY, untranspose_kernel

_PLAIN_ENCODER = re.compile(r"^encoder\.stages\.(\d+)\.(\d+)\.([01])\.(\w+)$")
_STEM = re.compile(r"^encoder\.stem\.([01])\.(\w+)$")
_BLOCK = re.compile(r"^encoder\.stages\.(\d+)\.(\d+)\.(conv1|conv2|skip\.\d+)\.([01])\.(\w+)$")
_DECODER = re.compile(r"^decoder\.stages\.(\d+)\.(\d+)\.([01])\.(\w+)$")
_LAYER = {"0": "conv", "1": "norm"}


def nnunet_name(volseg_key: str, residual: bool) -> str:
    """The name nnU-Net's network gives the parameter volseg calls ``volseg_key``.

    Example:
        >>> nnunet_name("encoder.stages.1.0.0.weight", residual=False)
        'encoder.stages.1.0.convs.0.conv.weight'
        >>> nnunet_name("encoder.stages.2.0.skip.1.1.bias", residual=True)
        'encoder.stages.2.blocks.0.skip.1.norm.bias'
    """
    if residual:
        m = _STEM.match(volseg_key)
        if m:
            return f"encoder.stem.convs.0.{_LAYER[m[1]]}.{m[2]}"
        m = _BLOCK.match(volseg_key)
        if m:
            return f"encoder.stages.{m[1]}.blocks.{m[2]}.{m[3]}.{_LAYER[m[4]]}.{m[5]}"
    else:
        m = _PLAIN_ENCODER.match(volseg_key)
        if m:
            return f"encoder.stages.{m[1]}.0.convs.{m[2]}.{_LAYER[m[3]]}.{m[4]}"
    m = _DECODER.match(volseg_key)
    if m:
        return f"decoder.stages.{m[1]}.convs.{m[2]}.{_LAYER[m[3]]}.{m[4]}"
    return volseg_key  # decoder.transpconvs.*, decoder.seg_layers.*


def canonical_name(key: str) -> str:
    """nnU-Net's first name of a parameter: without a ``module.`` / ``_orig_mod.`` prefix (DDP,
    ``torch.compile``), ``decoder.encoder.`` as ``encoder.``, ``all_modules.0`` as ``conv`` and
    ``all_modules.J`` (J ≥ 1, the norm: the only other layer with parameters) as ``norm``.

    Example:
        >>> canonical_name("decoder.encoder.stages.0.0.convs.1.all_modules.1.weight")
        'encoder.stages.0.0.convs.1.norm.weight'
    """
    for prefix in ("module.", "_orig_mod."):
        while key.startswith(prefix):
            key = key[len(prefix):]
    if key.startswith("decoder.encoder."):
        key = key[len("decoder."):]
    key = re.sub(r"\.all_modules\.0\.", ".conv.", key)
    return re.sub(r"\.all_modules\.[1-9]\d*\.", ".norm.", key)


def _by_canonical_name(weights: dict[str, torch.Tensor], path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    first: dict[str, str] = {}
    for key, value in weights.items():
        name = canonical_name(key)
        if name in out:
            same = out[name].shape == value.shape and torch.equal(out[name], value)
            if not same:
                raise ModelError(path, f"{first[name]} and {key} name the same parameter but hold different values")
            continue
        out[name], first[name] = value, key
    return out


def _fill_value(module: nn.Module, param: str, key: str, conv_bias: bool, norm_affine: bool) -> float | None:
    """The constant volseg's parameter takes when nnU-Net's network lacks it (None: it must exist)."""
    if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)) and param == "bias" and ".seg_layers." not in f".{key}":
        return 0.0 if (not conv_bias or ".skip." in key) else None
    if isinstance(module, (nn.InstanceNorm3d, nn.BatchNorm3d)) and param in ("weight", "bias") and not norm_affine:
        return 1.0 if param == "weight" else 0.0
    return None


def convert_state_dict(weights: dict[str, torch.Tensor], network: nn.Module, *, residual: bool, conv_bias: bool,
                       norm_affine: bool, forward: Sequence[int] = IDENTITY,
                       path: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """volseg's state dict for ``network`` from nnU-Net's ``network_weights``.

    Args:
        weights: nnU-Net's state dict (any of its names for a parameter).
        network: The volseg network built from the imported plan (its state dict gives the
            names and shapes expected; it is not modified).
        residual: nnU-Net's network is a ``ResidualEncoderUNet`` (volseg ``resenc_unet``).
        conv_bias, norm_affine: nnU-Net's ``conv_bias`` and the norms' ``affine``.
        forward: The plan's ``transpose_forward``; conv and transposed-conv kernels are
            permuted to the image's (z, y, x) order.
        path: The checkpoint, named in errors.

    Returns:
        A state dict ``network.load_state_dict`` accepts with ``strict=True``.

    Raises:
        ModelError: Naming ``path`` and the nnU-Net key: a missing key, an unexpected key, a
            shape other than the plan's network has, two names of one parameter with
            different values, or a non-finite value.
    """
    given = _by_canonical_name(weights, path)
    expected = network.state_dict()
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    missing: list[str] = []
    for key, target in expected.items():
        module_name, _, param = key.rpartition(".")
        module = network.get_submodule(module_name)
        name = nnunet_name(key, residual)
        fill = _fill_value(module, param, key, conv_bias, norm_affine)
        if fill is not None:
            if name in given:
                raise ModelError(path, f"unexpected key {name}: the plan's network has no such parameter "
                                 f"({'conv_bias is false' if param == 'bias' else 'its norms are not affine'})")
            out[key] = torch.full_like(target, fill)
            continue
        if name not in given:
            missing.append(name)
            continue
        value = given[name]
        used.add(name)
        if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)) and param == "weight" and value.dim() == 5 \
                and tuple(forward) != IDENTITY:
            value = untranspose_kernel(value, forward)
        if tuple(value.shape) != tuple(target.shape):
            raise ModelError(path, f"{name} has shape {list(value.shape)}, but the plan's network needs "
                             f"{list(target.shape)} (in the image's axis order); checkpoint and plans.json disagree")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise ModelError(path, f"{name} holds NaN or Inf values: the training diverged")
        out[key] = value.to(target.dtype).clone()
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ModelError(path, f"missing key {missing[0]}{more}: the checkpoint does not hold the network plans.json "
                         "describes")
    unexpected = sorted(set(given) - used)
    if unexpected:
        more = f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else ""
        raise ModelError(path, f"unexpected key {unexpected[0]}{more}: the checkpoint holds a network other than the "
                         "one plans.json describes")
    return out
