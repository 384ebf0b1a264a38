"""Run in the nnU-Net v2 peer environment (not volseg's): a trained-looking results folder and
nnU-Net's own predictions of it.

    PEER_PYTHON nnunet_peer_script.py SPEC.json WORKDIR

SPEC.json (written by tests/importers/test_nnunet_peer.py) describes one variant: the plan's
architecture, transpose, normalization, labels, mirroring axes, folds, and the cases (shape
and spacing in (z, y, x) order). This script writes into WORKDIR:

* ``results/DatasetXXX/nnUNetTrainer__nnUNetPlans__3d_fullres/``: plans.json, dataset.json,
  dataset_fingerprint.json and ``fold_K/checkpoint_final.pth``: a real ``PlainConvUNet`` or
  ``ResidualEncoderUNet`` built by nnU-Net from the plan, with random weights trained for
  ``train_steps`` Adam steps on synthetic cases, saved as nnU-Net's trainer saves checkpoints
  (optimizer and scaler state, logs of NumPy floats, init args with a ``torch.device``);
* ``images/CASE_000C.nii.gz``, ``nnunet/CASE.nii.gz`` and ``nnunet_fp32/CASE.nii.gz``: the cases,
  nnUNetPredictor's labels (Gaussian tiles, step 0.5, mirroring) and the same with float32
  tile accumulators;
* ``tile.npz``: one random input tile in nnU-Net's transposed frame and fold 0's logits;
* ``keys.json``: the state-dict keys of the network.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

CLASSES = {"PlainConvUNet": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
           "ResidualEncoderUNet": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"}


def transposed(values, forward):
    return [values[a] for a in forward]


def make_plans(spec: dict) -> dict:
    fwd = spec["transpose_forward"]
    back = [fwd.index(a) for a in range(3)]
    arch = {"n_stages": len(spec["features"]), "features_per_stage": spec["features"],
            "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": spec["kernel_sizes_t"],
            "strides": spec["strides_t"], spec["blocks_key"]: spec["blocks"],
            "n_conv_per_stage_decoder": spec["decoder"], "conv_bias": spec["conv_bias"],
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True}}
    resampling = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    config = {"data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
              "batch_size": 2, "patch_size": spec["patch_t"], "median_image_size_in_voxels": spec["patch_t"],
              "spacing": transposed(spec["spacing"], fwd), "normalization_schemes": spec["schemes"],
              "use_mask_for_norm": spec["use_mask"], "resampling_fn_data": "resample_data_or_seg_to_shape",
              "resampling_fn_seg": "resample_data_or_seg_to_shape", "resampling_fn_data_kwargs": resampling,
              "resampling_fn_seg_kwargs": {**resampling, "is_seg": True, "order": 1},
              "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
              "resampling_fn_probabilities_kwargs": {**resampling, "order": 1},
              "architecture": {"network_class_name": CLASSES[spec["network_class"]], "arch_kwargs": arch,
                               "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
              "batch_dice": False}
    props = {str(c): {"max": 400.0, "mean": 100.0 + 10 * c, "median": 90.0, "min": -50.0, "percentile_00_5": -20.0,
                      "percentile_99_5": 300.0, "std": 60.0} for c in range(len(spec["channels"]))}
    return {"dataset_name": spec["dataset"], "plans_name": "nnUNetPlans",
            "original_median_spacing_after_transp": transposed(spec["spacing"], fwd),
            "original_median_shape_after_transp": spec["patch_t"], "image_reader_writer": "SimpleITKIO",
            "transpose_forward": fwd, "transpose_backward": back, "configurations": {"3d_fullres": config},
            "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel": props}


def build_network(plans: dict, dataset: dict):
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(plans)
    config = manager.get_configuration("3d_fullres")
    heads = manager.get_label_manager(dataset).num_segmentation_heads
    return get_network_from_plans(config.network_arch_class_name, config.network_arch_init_kwargs,
                                  config.network_arch_init_kwargs_req_import, len(dataset["channel_names"]), heads,
                                  allow_init=True, deep_supervision=True)


def randomize(network: torch.nn.Module, seed: int) -> None:
    """He-initialized convs (nnU-Net's init), then random norm affines and biases, so that labels vary."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in network.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))


def save_like_trainer(network, plans, dataset, fold: int, mirror_axes, path: Path) -> None:
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.99, nesterov=True, weight_decay=3e-5)
    optimizer.zero_grad()
    out = network(torch.randn(1, len(dataset["channel_names"]), *plans["configurations"]["3d_fullres"]["patch_size"]))
    (out[0] if isinstance(out, (list, tuple)) else out).mean().backward()
    state = {k: v.clone() for k, v in network.state_dict().items()}
    optimizer.step()  # momentum buffers in the optimizer state, as after training
    network.load_state_dict(state)
    logs = {"mean_fg_dice": [np.float32(0.41), np.float32(0.52)], "ema_fg_dice": [np.float32(0.41), np.float32(0.42)],
            "dice_per_class_or_region": [[np.float32(0.3), np.float32(0.5)], [np.float32(0.4), np.float32(0.6)]],
            "train_losses": [np.float64(-0.1), np.float64(-0.2)], "val_losses": [np.float32(-0.1), np.float32(-0.3)],
            "lrs": [0.01, 0.0099], "epoch_start_timestamps": [1.7e9, 1.7e9 + 60],
            "epoch_end_timestamps": [1.7e9 + 59, 1.7e9 + 119]}
    checkpoint = {"network_weights": network.state_dict(), "optimizer_state": optimizer.state_dict(),
                  "grad_scaler_state": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                                        "growth_interval": 2000, "_growth_tracker": 0},
                  "logging": logs, "_best_ema": np.float32(0.42), "current_epoch": 2,
                  "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": fold, "dataset_json": dataset,
                                "device": torch.device("cuda")},
                  "trainer_name": "nnUNetTrainer", "inference_allowed_mirroring_axes": tuple(mirror_axes)}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)


def synthetic_case(shape, channels: int, rng, margin: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(C, Z, Y, X) float32 images of smooth texture, noise and three bright blobs, and their
    (Z, Y, X) labels: 1 inside a blob, 2 in its core. Zero outside ``margin`` voxels when given."""
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    blobs = np.zeros(shape)
    for _ in range(3):
        centre = rng.uniform(-0.6, 0.6, 3)
        blobs = np.maximum(blobs, np.exp(-((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2) / 0.05))
    labels = (blobs > 0.3).astype(np.uint8) + (blobs > 0.7)
    images = []
    for c in range(channels):
        img = 30.0 * np.sin(3 * zz + 2 * c) * np.cos(4 * yy) + 20.0 * np.cos(5 * xx - c) + 60.0
        img += 150.0 * blobs + rng.normal(0, 15, shape)
        if margin:
            inside = np.zeros(shape, bool)
            inside[margin:-margin, margin:-margin, margin:-margin] = True
            img[~inside] = 0
            labels[~inside] = 0
        images.append(img)
    return np.stack(images).astype(np.float32), labels


def train_briefly(network, spec: dict, steps: int, seed: int) -> None:
    """A few Adam steps on synthetic cases, so that neighbouring tiles agree as a trained network's do.

    The images are normalized roughly as the plan says and transposed into nnU-Net's frame.
    """
    rng = np.random.default_rng(seed)
    fwd = spec["transpose_forward"]
    patch_t = spec["patch_t"]
    shape = [max(p + 8, 2 * p) for p in (patch_t[fwd.index(a)] for a in range(3))]  # image (z, y, x) order
    cases = [synthetic_case(shape, len(spec["channels"]), rng) for _ in range(2)]
    opt = torch.optim.Adam(network.parameters(), lr=3e-3)
    network.train()
    regions = [v if isinstance(v, list) else [v] for k, v in spec["labels"].items() if k != "background"]
    for step in range(steps):
        xs, ys = [], []
        for _ in range(2):
            img, lab = cases[rng.integers(len(cases))]
            img = (np.clip(img, -20, 300) - 100.0) / 60.0
            img, lab = img.transpose(0, *(1 + a for a in fwd)), lab.transpose(fwd)
            start = [rng.integers(0, s - p + 1) for s, p in zip(lab.shape, patch_t)]
            sl = tuple(slice(a, a + p) for a, p in zip(start, patch_t))
            xs.append(img[(slice(None), *sl)])
            ys.append(lab[sl])
        x, y = torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys)).long()
        out = network(x)
        out = out[0] if isinstance(out, (list, tuple)) else out
        if spec.get("regions_class_order"):
            target = torch.stack([sum((y == v) for v in r).float() for r in regions], 1)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(out, target)
        else:
            loss = torch.nn.functional.cross_entropy(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    network.eval()


def write_case(folder: Path, case_id: str, shape, spacing, channels: int, rng, margin: int) -> None:
    images, _ = synthetic_case(shape, channels, rng, margin)
    for c, img in enumerate(images):
        image = sitk.GetImageFromArray(img)
        image.SetSpacing(tuple(float(s) for s in spacing[::-1]))
        image.SetOrigin((10.0, -5.0, 3.0))
        sitk.WriteImage(image, str(folder / f"{case_id}_{c:04d}.nii.gz"))


def main(spec_file: str, workdir: str) -> None:
    t_start = time.perf_counter()
    spec = json.loads(Path(spec_file).read_text())
    work = Path(workdir)
    trainer = work / "results" / spec["dataset"] / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    trainer.mkdir(parents=True, exist_ok=True)
    plans = make_plans(spec)
    dataset = {"channel_names": spec["channels"], "labels": spec["labels"], "numTraining": 10,
               "file_ending": ".nii.gz"}
    if "regions_class_order" in spec:
        dataset["regions_class_order"] = spec["regions_class_order"]
    (trainer / "plans.json").write_text(json.dumps(plans, indent=2))
    (trainer / "dataset.json").write_text(json.dumps(dataset, indent=2))
    (trainer / "dataset_fingerprint.json").write_text(json.dumps(
        {"foreground_intensity_properties_per_channel": plans["foreground_intensity_properties_per_channel"]}))
    networks = []
    for fold in spec["folds"]:
        torch.manual_seed(fold)
        net = build_network(plans, dataset)
        randomize(net, seed=100 + fold)
        if spec.get("train_steps"):
            train_briefly(net, spec, spec["train_steps"], seed=fold)
        save_like_trainer(net, plans, dataset, fold, spec["mirror_axes_t"], trainer / f"fold_{fold}" / "checkpoint_final.pth")
        networks.append(net)
    (work / "keys.json").write_text(json.dumps(list(networks[0].state_dict())))
    net = networks[0].eval()
    net.decoder.deep_supervision = False
    g = torch.Generator().manual_seed(7)
    tile = torch.randn(1, len(spec["channels"]), *spec["patch_t"], generator=g)
    with torch.no_grad():
        logits = net(tile)
    np.savez(work / "tile.npz", tile=tile.numpy(), logits=logits.numpy(), forward=np.array(spec["transpose_forward"]))
    images = work / "images"
    images.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for case in spec["cases"]:
        write_case(images, case["id"], case["shape"], case["spacing"], len(spec["channels"]), rng, case.get("margin", 0))
    t0 = time.perf_counter()
    predict(trainer, spec["folds"], images, work / "nnunet")
    t1 = time.perf_counter()
    with float32_accumulation():
        predict(trainer, spec["folds"], images, work / "nnunet_fp32")
    print(f"timing: setup {t0 - t_start:.1f} s, nnU-Net predictions {t1 - t0:.1f} s, "
          f"float32 predictions {time.perf_counter() - t1:.1f} s", file=sys.stderr)


def predict(trainer: Path, folds, images: Path, out: Path) -> None:
    """nnUNetPredictor's labels of every case: Gaussian-weighted tiles at step 0.5, mirroring."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                                allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(trainer), use_folds=tuple(folds),
                                                   checkpoint_name="checkpoint_final.pth")
    out.mkdir(exist_ok=True)
    predictor.predict_from_files_sequential(str(images), str(out), save_probabilities=False, overwrite=True)


@contextlib.contextmanager
def float32_accumulation():
    """nnUNetPredictor with its tile accumulators and Gaussian in float32 instead of float16.

    nnU-Net stitches tiles in float16; at the tile faces the Gaussian weights (down to about
    1e-7 of the centre) underflow there, and the logits near the image's faces lose up to
    ~0.5. This reference isolates what the two tools compute from that rounding.
    """
    import types

    import nnunetv2.inference.predict_from_raw_data as module

    class Float32Half(types.ModuleType):
        def __getattr__(self, name):
            return torch.float32 if name == "half" else getattr(torch, name)

    saved = module.torch, module.compute_gaussian

    def gaussian_float32(*args, **kwargs):
        return saved[1](*args, **{**kwargs, "dtype": torch.float32})

    gaussian_float32.cache_clear = saved[1].cache_clear  # the predictor clears nnU-Net's cache
    module.torch = Float32Half("torch")
    module.compute_gaussian = gaussian_float32
    try:
        yield
    finally:
        module.torch, module.compute_gaussian = saved


if __name__ == "__main__":
    torch.set_num_threads(2)
    main(sys.argv[1], sys.argv[2])
