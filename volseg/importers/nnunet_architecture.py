"""nnU-Net's ``architecture`` section → a volseg ``network`` section, or a one-line refusal.

nnU-Net v2 names the network class (``network_class_name``) and its constructor arguments
(``arch_kwargs``, classes as dotted names). volseg's ``unet`` and ``resenc_unet`` are the same
topologies as ``dynamic_network_architectures``' ``PlainConvUNet`` and ``ResidualEncoderUNet``
with conv → norm → LeakyReLU(0.01) (or ReLU) layers, InstanceNorm3d or BatchNorm3d with
eps 1e-5, and a conv bias everywhere. What nnU-Net can configure beyond that is either
equivalent at inference (no conv bias = a zero bias, a non-affine norm = weight 1 and
bias 0, dropout = the identity) or refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from volseg.importers.nnunet_axes import untranspose

NETWORK_CLASSES = {"PlainConvUNet": "unet", "ResidualEncoderUNet": "resenc_unet"}
CONV_3D = ("torch.nn.modules.conv.Conv3d", "torch.nn.Conv3d")
NORMS = {"torch.nn.modules.instancenorm.InstanceNorm3d": "instance", "torch.nn.InstanceNorm3d": "instance",
         "torch.nn.modules.batchnorm.BatchNorm3d": "batch", "torch.nn.BatchNorm3d": "batch"}
NONLINS = {"torch.nn.LeakyReLU": "leaky_relu", "torch.nn.modules.activation.LeakyReLU": "leaky_relu",
           "torch.nn.ReLU": "relu", "torch.nn.modules.activation.ReLU": "relu"}
DROPOUTS = ("torch.nn.Dropout", "torch.nn.Dropout3d", "torch.nn.modules.dropout.Dropout",
            "torch.nn.modules.dropout.Dropout3d")
BASIC_BLOCK = "dynamic_network_architectures.building_blocks.residual.BasicBlockD"
# arch_kwargs volseg reads; any other key changes the network in a way it cannot follow
KNOWN_KWARGS = {"n_stages", "features_per_stage", "conv_op", "kernel_sizes", "strides", "n_conv_per_stage",
                "n_blocks_per_stage", "n_conv_per_stage_decoder", "conv_bias", "norm_op", "norm_op_kwargs",
                "dropout_op", "dropout_op_kwargs", "nonlin", "nonlin_kwargs", "deep_supervision", "nonlin_first",
                "block", "bottleneck_channels", "stem_channels"}
NORM_EPS = 1e-5  # volseg's InstanceNorm3d / BatchNorm3d
LEAKY_SLOPE = 1e-2  # volseg's LeakyReLU
# trainers whose build_network_architecture replaces part of the plan's architecture
TRAINER_NORMS = {"nnUNetTrainerBN": ("torch.nn.modules.batchnorm.BatchNorm3d", {"eps": 1e-5, "affine": True})}


class ArchitectureError(ValueError):
    """What volseg cannot represent; the caller names the file."""


@dataclass(frozen=True)
class ImportedArchitecture:
    """A configuration's network, as volseg builds it.

    Attributes:
        network: The volseg plan's ``network`` section, in the image's (z, y, x) axis order.
        class_name: ``"PlainConvUNet"`` or ``"ResidualEncoderUNet"``.
        conv_bias: Whether nnU-Net's convs (and transposed convs) have a bias; without one,
            volseg's biases are set to 0.
        norm_affine: Whether nnU-Net's norms have weight and bias; without, volseg's are 1 and 0.
        notes: What was mapped by equivalence (e.g. dropout, the identity at inference).
    """

    network: dict
    class_name: str
    conv_bias: bool
    norm_affine: bool
    notes: list[str] = field(default_factory=list)


def legacy_arch_kwargs(config: dict) -> tuple[str, dict]:
    """``(network_class_name, arch_kwargs)`` of a configuration in nnU-Net's pre-2.4 plan format
    (``UNet_class_name``, ``UNet_base_num_features``, ``conv_kernel_sizes``, ...), with the values
    nnU-Net itself assumes for such plans (conv bias, affine InstanceNorm3d, LeakyReLU)."""
    name = config["UNet_class_name"]
    n = len(config["n_conv_per_stage_encoder"])
    blocks_key = "n_blocks_per_stage" if name == "ResidualEncoderUNet" else "n_conv_per_stage"
    kwargs = {"n_stages": n,
              "features_per_stage": [min(config["UNet_base_num_features"] * 2 ** i, config["unet_max_num_features"])
                                     for i in range(n)],
              "conv_op": CONV_3D[0] if len(config["patch_size"]) == 3 else "torch.nn.modules.conv.Conv2d",
              "kernel_sizes": config["conv_kernel_sizes"], "strides": config["pool_op_kernel_sizes"],
              blocks_key: config["n_conv_per_stage_encoder"],
              "n_conv_per_stage_decoder": config["n_conv_per_stage_decoder"], "conv_bias": True,
              "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
              "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
              "nonlin_kwargs": {"inplace": True}}
    return f"dynamic_network_architectures.architectures.unet.{name}", kwargs


def _per_stage(value, n: int, key: str, triples: bool) -> list:
    """nnU-Net accepts a scalar for every stage (and for every axis); expand it."""
    if not isinstance(value, (list, tuple)):
        value = [value] * n
    if len(value) != n:
        raise ArchitectureError(f"arch_kwargs.{key} has {len(value)} entries for n_stages {n}")
    if triples:
        value = [list(v) if isinstance(v, (list, tuple)) else [v] * 3 for v in value]
        if any(len(v) != 3 for v in value):
            raise ArchitectureError(f"arch_kwargs.{key} must hold one (z, y, x) triple per stage, got {value!r}")
    return [v if triples else int(v) for v in value]


def _norm(kwargs: dict, trainer_name: str) -> tuple[str, bool, list[str]]:
    """(volseg norm, affine, notes) of the plan's norm_op, or a refusal."""
    op, op_kwargs = kwargs.get("norm_op"), dict(kwargs.get("norm_op_kwargs") or {})
    notes = []
    if trainer_name in TRAINER_NORMS:
        op, op_kwargs = TRAINER_NORMS[trainer_name][0], dict(TRAINER_NORMS[trainer_name][1])
        notes.append(f"trainer {trainer_name} replaces the plan's norm with {op.rsplit('.', 1)[-1]}")
    if op not in NORMS:
        raise ArchitectureError(f"norm_op {op!r} cannot be represented; volseg has InstanceNorm3d and BatchNorm3d")
    norm = NORMS[op]
    unknown = sorted(set(op_kwargs) - {"eps", "affine", "momentum", "track_running_stats"})
    if unknown:
        raise ArchitectureError(f"norm_op_kwargs {', '.join(unknown)} cannot be represented")
    eps = float(op_kwargs.get("eps", 1e-5))
    if not math.isclose(eps, NORM_EPS, rel_tol=1e-9, abs_tol=0.0):
        raise ArchitectureError(f"norm_op_kwargs.eps {eps:g} cannot be represented; volseg's norms use eps {NORM_EPS:g}")
    affine = bool(op_kwargs.get("affine", norm == "batch"))  # torch's defaults: InstanceNorm False, BatchNorm True
    running = bool(op_kwargs.get("track_running_stats", norm == "batch"))
    if running != (norm == "batch"):
        what = "InstanceNorm3d with running statistics" if norm == "instance" else "BatchNorm3d without running statistics"
        raise ArchitectureError(f"{what} (track_running_stats {running}) cannot be represented")
    return norm, affine, notes


def _nonlin(kwargs: dict) -> str:
    op, op_kwargs = kwargs.get("nonlin"), dict(kwargs.get("nonlin_kwargs") or {})
    if op not in NONLINS:
        raise ArchitectureError(f"nonlin {op!r} cannot be represented; volseg has LeakyReLU (slope 0.01) and ReLU")
    unknown = sorted(set(op_kwargs) - {"inplace", "negative_slope"})
    if unknown or (NONLINS[op] == "relu" and "negative_slope" in op_kwargs):
        raise ArchitectureError(f"nonlin_kwargs {', '.join(unknown or ['negative_slope'])} cannot be represented")
    slope = float(op_kwargs.get("negative_slope", 0.01))
    if NONLINS[op] == "leaky_relu" and not math.isclose(slope, LEAKY_SLOPE, rel_tol=1e-9):
        raise ArchitectureError(f"LeakyReLU negative_slope {slope:g} cannot be represented; volseg's is {LEAKY_SLOPE:g}")
    return NONLINS[op]


def map_architecture(config: dict, forward: Sequence[int], trainer_name: str = "nnUNetTrainer") -> ImportedArchitecture:
    """The volseg ``network`` section of one nnU-Net configuration.

    Args:
        config: The configuration (after ``inherits_from`` is resolved), new or pre-2.4 format.
        forward: The plan's ``transpose_forward``; kernel sizes and strides are returned in the
            image's (z, y, x) order.
        trainer_name: The checkpoint's trainer; ``nnUNetTrainerBN`` builds BatchNorm3d
            whatever the plan says.

    Raises:
        ArchitectureError: One line naming what volseg cannot represent: another network class,
            a 2D conv, another norm, nonlinearity or eps, nonlin_first, a bottleneck block, a
            stem of its own width, an unknown constructor argument.
    """
    if "architecture" in config:
        arch = config["architecture"]
        if not isinstance(arch, dict) or not isinstance(arch.get("arch_kwargs"), dict):
            raise ArchitectureError("architecture must hold network_class_name and arch_kwargs")
        class_path, kwargs = str(arch.get("network_class_name", "")), dict(arch["arch_kwargs"])
    elif "UNet_class_name" in config:
        class_path, kwargs = legacy_arch_kwargs(config)
    else:
        raise ArchitectureError("no architecture section (network_class_name and arch_kwargs)")
    class_name = class_path.rsplit(".", 1)[-1]
    if class_name not in NETWORK_CLASSES or not class_path.startswith("dynamic_network_architectures."):
        raise ArchitectureError(f"network class {class_path!r} cannot be imported; volseg imports "
                                f"dynamic_network_architectures' {' and '.join(NETWORK_CLASSES)}")
    if kwargs.get("conv_op") not in CONV_3D:
        raise ArchitectureError(f"conv_op {kwargs.get('conv_op')!r}: volseg imports 3D configurations (Conv3d) only")
    unknown = sorted(set(kwargs) - KNOWN_KWARGS)
    if unknown:
        raise ArchitectureError(f"arch_kwargs {', '.join(unknown)} cannot be represented")
    if kwargs.get("nonlin_first"):
        raise ArchitectureError("nonlin_first (conv → nonlinearity → norm) cannot be represented; volseg's layers are "
                                "conv → norm → nonlinearity")
    residual = class_name == "ResidualEncoderUNet"
    blocks_key = "n_blocks_per_stage" if residual else "n_conv_per_stage"
    for key in ("n_stages", "features_per_stage", "kernel_sizes", "strides", blocks_key, "n_conv_per_stage_decoder"):
        if key not in kwargs:
            raise ArchitectureError(f"arch_kwargs has no {key}")
    n = int(kwargs["n_stages"])
    features = _per_stage(kwargs["features_per_stage"], n, "features_per_stage", False)
    notes: list[str] = []
    if residual:
        block = kwargs.get("block")
        if block is not None and block != BASIC_BLOCK:
            raise ArchitectureError(f"block {block!r} cannot be represented; volseg's residual encoder uses BasicBlockD")
        stem = kwargs.get("stem_channels")
        if stem is not None and int(stem) != features[0]:
            raise ArchitectureError(f"stem_channels {stem} cannot be represented; volseg's stem has "
                                    f"features_per_stage[0] = {features[0]} channels")
    norm, affine, norm_notes = _norm(kwargs, trainer_name)
    notes += norm_notes
    activation = _nonlin(kwargs)
    dropout = kwargs.get("dropout_op")
    if dropout is not None:
        if dropout not in DROPOUTS:
            raise ArchitectureError(f"dropout_op {dropout!r} cannot be represented")
        notes.append(f"{dropout.rsplit('.', 1)[-1]} left out: the identity at inference")
    kernels = _per_stage(kwargs["kernel_sizes"], n, "kernel_sizes", True)
    strides = _per_stage(kwargs["strides"], n, "strides", True)
    decoder = kwargs["n_conv_per_stage_decoder"]
    decoder = [int(decoder)] * (n - 1) if not isinstance(decoder, (list, tuple)) else [int(v) for v in decoder]
    network = {"architecture": NETWORK_CLASSES[class_name], "features_per_stage": features,
               "kernel_sizes": [[int(v) for v in untranspose(k, forward)] for k in kernels],
               "strides": [[int(v) for v in untranspose(s, forward)] for s in strides],
               "n_conv_per_stage": _per_stage(kwargs[blocks_key], n, blocks_key, False),
               "n_conv_per_stage_decoder": decoder, "norm": norm, "activation": activation,
               "deep_supervision": True}
    return ImportedArchitecture(network=network, class_name=class_name, conv_bias=bool(kwargs.get("conv_bias", False)),
                                norm_affine=affine, notes=notes)
