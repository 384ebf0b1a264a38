"""Small nnU-Net v2 trainer folders for the import tests, written without nnU-Net.

The network of a folder is a volseg ``UNet`` / ``ResEncUNet`` built in nnU-Net's transposed
frame (kernel sizes and strides as the plan lists them), the "original" that the imported
network is compared with. Its state dict is written under nnU-Net's key names by
:func:`nnunet_state_dict`, written here independently of volseg's importer (conv and norm of
every layer under both of their names, the decoder's copy of the encoder); the peer test
(``test_nnunet_peer.py``) checks these names against a real ``PlainConvUNet`` and
``ResidualEncoderUNet``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from volseg.networks.blocks import ConvNormAct
from volseg.networks.unet import ResEncUNet, UNet

TRAINER = "nnUNetTrainer__nnUNetPlans__3d_fullres"
CLASS_PATHS = {"PlainConvUNet": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
               "ResidualEncoderUNet": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"}


@dataclass
class FolderSpec:
    """One trainer folder; per-axis values in nnU-Net's transposed order (``*_t``), spacing too."""

    network_class: str = "PlainConvUNet"
    features: list = field(default_factory=lambda: [4, 8, 16])
    kernel_sizes_t: list = field(default_factory=lambda: [[1, 3, 3], [3, 3, 3], [3, 3, 3]])
    strides_t: list = field(default_factory=lambda: [[1, 1, 1], [1, 2, 2], [2, 2, 2]])
    blocks: list = field(default_factory=lambda: [2, 2, 2])
    decoder: list = field(default_factory=lambda: [1, 1])
    conv_bias: bool = True
    patch_t: list = field(default_factory=lambda: [8, 16, 16])
    spacing_t: list = field(default_factory=lambda: [2.0, 1.0, 1.0])
    transpose_forward: list = field(default_factory=lambda: [0, 1, 2])
    schemes: list = field(default_factory=lambda: ["CTNormalization"])
    use_mask: list = field(default_factory=lambda: [False])
    channels: dict = field(default_factory=lambda: {"0": "CT"})
    labels: dict = field(default_factory=lambda: {"background": 0, "liver": 1, "tumour": 2})
    regions_class_order: list | None = None
    mirror_axes_t: tuple | None = (0, 1, 2)
    folds: tuple = (0,)
    trainer_name: str = "nnUNetTrainer"

    @property
    def num_outputs(self) -> int:
        labels = {k: v for k, v in self.labels.items() if k != "ignore"}
        if any(isinstance(v, list) for v in labels.values()):
            return len(labels) - 1
        return len(labels)


def _layer(out: dict, prefix: str, module: ConvNormAct, conv_bias: bool) -> None:
    conv, norm = module[0], module[1]
    for name in (f"{prefix}.conv", f"{prefix}.all_modules.0"):
        out[f"{name}.weight"] = conv.weight.detach().clone()
        if conv_bias:
            out[f"{name}.bias"] = conv.bias.detach().clone()
    for name in (f"{prefix}.norm", f"{prefix}.all_modules.1"):
        out[f"{name}.weight"] = norm.weight.detach().clone()
        out[f"{name}.bias"] = norm.bias.detach().clone()


def nnunet_state_dict(net: UNet, residual: bool, conv_bias: bool = True) -> dict[str, torch.Tensor]:
    """``net``'s parameters under the names nnU-Net's network gives them (both names of each).

    With ``conv_bias`` false, the conv biases of ``net`` must be zero: nnU-Net's convs have none.
    """
    out: dict[str, torch.Tensor] = {}
    enc = net.encoder
    if residual:
        _layer(out, "encoder.stem.convs.0", enc.stem, conv_bias)
        for s, stage in enumerate(enc.stages):
            for b, block in enumerate(stage):
                _layer(out, f"encoder.stages.{s}.blocks.{b}.conv1", block.conv1, conv_bias)
                _layer(out, f"encoder.stages.{s}.blocks.{b}.conv2", block.conv2, conv_bias)
                for k, part in enumerate(block.skip):
                    if isinstance(part, ConvNormAct):
                        _layer(out, f"encoder.stages.{s}.blocks.{b}.skip.{k}", part, conv_bias=False)
    else:
        for s, stage in enumerate(enc.stages):
            for i, layer in enumerate(stage):
                _layer(out, f"encoder.stages.{s}.0.convs.{i}", layer, conv_bias)
    out.update({f"decoder.{k}": v.clone() for k, v in list(out.items())})  # the decoder's reference to the encoder
    dec = net.decoder
    for s, stage in enumerate(dec.stages):
        for i, layer in enumerate(stage):
            _layer(out, f"decoder.stages.{s}.convs.{i}", layer, conv_bias)
    for s, (up, seg) in enumerate(zip(dec.transpconvs, dec.seg_layers)):
        out[f"decoder.transpconvs.{s}.weight"] = up.weight.detach().clone()
        if conv_bias:
            out[f"decoder.transpconvs.{s}.bias"] = up.bias.detach().clone()
        out[f"decoder.seg_layers.{s}.weight"] = seg.weight.detach().clone()
        out[f"decoder.seg_layers.{s}.bias"] = seg.bias.detach().clone()
    return out


def original_network(spec: FolderSpec, seed: int) -> UNet:
    """The network in nnU-Net's transposed frame, with random weights (zero conv biases without conv_bias)."""
    torch.manual_seed(seed)
    cls = ResEncUNet if spec.network_class == "ResidualEncoderUNet" else UNet
    net = cls(in_channels=len(spec.channels), num_outputs=spec.num_outputs, features_per_stage=spec.features,
              kernel_sizes=spec.kernel_sizes_t, strides=spec.strides_t, n_conv_per_stage=spec.blocks,
              n_conv_per_stage_decoder=spec.decoder)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, module in net.named_modules():
            if isinstance(module, (torch.nn.InstanceNorm3d,)):
                module.weight.copy_(0.5 + torch.rand(module.weight.shape, generator=g))
                module.bias.copy_(0.2 * torch.randn(module.bias.shape, generator=g))
            elif isinstance(module, (torch.nn.Conv3d, torch.nn.ConvTranspose3d)):
                keep = spec.conv_bias and ".skip." not in f".{name}." or name.startswith("decoder.seg_layers")
                module.bias.copy_(0.2 * torch.randn(module.bias.shape, generator=g) if keep
                                  else torch.zeros_like(module.bias))
    return net.eval()


def plans_json(spec: FolderSpec) -> dict:
    kwargs = {"n_stages": len(spec.features), "features_per_stage": spec.features,
              "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": spec.kernel_sizes_t, "strides": spec.strides_t,
              ("n_blocks_per_stage" if spec.network_class == "ResidualEncoderUNet" else "n_conv_per_stage"): spec.blocks,
              "n_conv_per_stage_decoder": spec.decoder, "conv_bias": spec.conv_bias,
              "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-05, "affine": True},
              "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
              "nonlin_kwargs": {"inplace": True}}
    config = {"data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
              "batch_size": 2, "patch_size": spec.patch_t, "median_image_size_in_voxels": [float(p) for p in spec.patch_t],
              "spacing": spec.spacing_t, "normalization_schemes": spec.schemes, "use_mask_for_norm": spec.use_mask,
              "resampling_fn_data": "resample_data_or_seg_to_shape",
              "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
              "architecture": {"network_class_name": CLASS_PATHS.get(spec.network_class, spec.network_class),
                               "arch_kwargs": kwargs,
                               "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
              "batch_dice": True}
    props = {str(c): {"max": 500.0, "mean": 80.0, "median": 75.0, "min": -100.0, "percentile_00_5": -50.0,
                      "percentile_99_5": 300.0, "std": 70.0} for c in range(len(spec.channels))}
    back = [spec.transpose_forward.index(a) for a in range(3)]
    return {"dataset_name": "Dataset042_Tiny", "plans_name": "nnUNetPlans",
            "original_median_spacing_after_transp": spec.spacing_t, "image_reader_writer": "SimpleITKIO",
            "transpose_forward": spec.transpose_forward, "transpose_backward": back,
            "configurations": {"3d_fullres": config}, "experiment_planner_used": "ExperimentPlanner",
            "label_manager": "LabelManager", "foreground_intensity_properties_per_channel": props}


def trainer_checkpoint(state: dict, spec: FolderSpec, plans: dict, dataset: dict, fold: int) -> dict:
    """A dict as nnU-Net's trainer saves it: optimizer state, NumPy-float logs, init args with a device."""
    params = [torch.zeros(3, requires_grad=True)]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.99, nesterov=True, weight_decay=3e-5)
    params[0].grad = torch.ones(3)
    optimizer.step()
    logs = {"mean_fg_dice": [np.float32(0.5)], "ema_fg_dice": [np.float32(0.5)],
            "dice_per_class_or_region": [[np.float32(0.4), np.float32(0.6)]], "train_losses": [np.float64(-0.3)],
            "val_losses": [np.float32(-0.2)], "lrs": [0.01], "epoch_start_timestamps": [1.7e9],
            "epoch_end_timestamps": [1.7e9 + 60.0]}
    return {"network_weights": state, "optimizer_state": optimizer.state_dict(), "grad_scaler_state": None,
            "logging": logs, "_best_ema": np.float32(0.5), "current_epoch": 1000,
            "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": fold, "dataset_json": dataset,
                          "device": torch.device("cuda")},
            "trainer_name": spec.trainer_name,
            "inference_allowed_mirroring_axes": spec.mirror_axes_t}


def write_results_folder(root: Path, spec: FolderSpec | None = None, checkpoint: str = "final") -> tuple[Path, dict]:
    """Write ``root/Dataset042_Tiny/nnUNetTrainer__nnUNetPlans__3d_fullres``.

    Returns:
        The trainer folder and fold → original network (in nnU-Net's transposed frame).
    """
    spec = spec or FolderSpec()
    folder = Path(root) / "Dataset042_Tiny" / TRAINER
    folder.mkdir(parents=True, exist_ok=True)
    plans = plans_json(spec)
    dataset = {"channel_names": spec.channels, "labels": spec.labels, "numTraining": 4, "file_ending": ".nii.gz"}
    if spec.regions_class_order is not None:
        dataset["regions_class_order"] = spec.regions_class_order
    (folder / "plans.json").write_text(json.dumps(plans, indent=2))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    (folder / "dataset_fingerprint.json").write_text(json.dumps(
        {"foreground_intensity_properties_per_channel": plans["foreground_intensity_properties_per_channel"]}))
    networks = {}
    for fold in spec.folds:
        net = original_network(spec, seed=fold)
        state = nnunet_state_dict(net, spec.network_class == "ResidualEncoderUNet", spec.conv_bias)
        (folder / f"fold_{fold}").mkdir(exist_ok=True)
        torch.save(trainer_checkpoint(state, spec, plans, dataset, fold),
                   folder / f"fold_{fold}" / f"checkpoint_{checkpoint}.pth")
        networks[fold] = net
    return folder, networks
