"""MONAI's ``RetinaNetDetector`` on volseg's preprocessed cases: the peer of
benchmarks/detection_vs_peers.py. Runs in volseg's own environment (MONAI is installed there);
volseg supplies the data (its patch sampler, preprocessing and box export), MONAI the model,
matcher, sampler, losses, sliding window and box selection.

Axis order: volseg's arrays and boxes are (z, y, x); MONAI's 3D boxes are in mode "xyzxyz",
ordered like the image tensor's spatial axes. Images are therefore transposed to (C, x, y, z)
before they reach MONAI, and boxes are permuted with :data:`SWAP` (its own inverse) both ways,
so MONAI's x really is the image's x.

Network: a ResNet-10-like backbone (MONAI ``ResNet``, basic blocks, ``layers`` [1, 1, 1, 1],
widths 32/64/128/256, affine instance norm like volseg's U-Net, a 7³ first convolution whose
stride is the plan's first detection-level stride, no max pool), layers 1–3 into MONAI's
``FeaturePyramidNetwork`` with 32 channels and its extra max-pooled level, and MONAI's
``RetinaNet`` heads. :class:`ResNetFPN` is MONAI's ``BackboneWithFPN`` without torchvision
(which that class needs only for ``IntermediateLayerGetter``, and which volseg's environment
lacks); MONAI's ``resnet_fpn_feature_extractor`` would also fix the FPN at 256 channels, whose
four-convolution heads would cost several times volseg's whole iteration. Feature strides are S, 2S, 4S, 8S with S
the first detection level's stride of the plan (2 on the demo), so the first two levels are
volseg's two detection levels. Anchors: ``AnchorGeneratorWithAnchorShape`` with the plan's
first-level shapes (voxels) scaled by 1, 2, 4, 8, i.e. exactly the planned shapes on the
levels volseg has, and their doubles on the coarser levels only MONAI has.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

SWAP = [2, 1, 0, 5, 4, 3]  # (z0, y0, x0, z1, y1, x1) <-> (x0, y0, z0, x1, y1, z1)
RETURNED_LAYERS = (1, 2, 3)
FPN_CHANNELS = 32
WIDTHS = (32, 64, 128, 256)
AUGMENTATION = "flips (p 0.5 per axis, boxes computed after)"


class ResNetFPN(torch.nn.Module):
    """MONAI's ResNet stem and layers 1..max(RETURNED_LAYERS), then MONAI's FPN (``BackboneWithFPN``'s job)."""

    def __init__(self, backbone, fpn, out_channels: int) -> None:
        super().__init__()
        self.stem = torch.nn.Sequential(backbone.conv1, backbone.bn1, backbone.act)
        self.layers = torch.nn.ModuleList(getattr(backbone, f"layer{k}") for k in range(1, max(RETURNED_LAYERS) + 1))
        self.fpn, self.out_channels = fpn, out_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x, feats = self.stem(x), {}
        for k, layer in enumerate(self.layers, start=1):
            x = layer(x)
            if k in RETURNED_LAYERS:
                feats[str(len(feats))] = x
        return self.fpn(feats)


def without_torchvision() -> None:
    """Let MONAI's detector run without torchvision: its loss asks ``isinstance(matcher,
    torchvision's Matcher)`` before trying the ATSS matcher, and the lazy import placeholder
    raises on that test; a stand-in class answers False instead. Nothing else changes."""
    import importlib.util

    import monai.apps.detection.networks.retinanet_detector as rd

    if importlib.util.find_spec("torchvision") is None:
        rd.Matcher = type("NoTorchvisionMatcher", (), {})


def build_detector(config: dict, num_channels: int, num_classes: int, device: torch.device):
    """MONAI's RetinaNetDetector for the plan's configuration (see the module docstring)."""
    from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
    from monai.apps.detection.networks.retinanet_network import RetinaNet
    from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
    from monai.networks.blocks.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool
    from monai.networks.nets.resnet import ResNet

    without_torchvision()
    det = config["detection"]
    first = det["anchors"]["levels"][0]
    stride_xyz = list(first["stride"][::-1])
    backbone = ResNet(block="basic", layers=[1, 1, 1, 1], block_inplanes=list(WIDTHS), spatial_dims=3,
                      n_input_channels=num_channels, conv1_t_size=7, conv1_t_stride=stride_xyz,
                      no_max_pool=True, feed_forward=False, norm=("instance", {"affine": True}))
    fpn = ResNetFPN(backbone, FeaturePyramidNetwork(3, [WIDTHS[k - 1] for k in RETURNED_LAYERS], FPN_CHANNELS,
                                                    extra_blocks=LastLevelMaxPool(3)), FPN_CHANNELS)
    levels = len(RETURNED_LAYERS) + 1
    divisible = [s * 2 ** (levels - 1) for s in stride_xyz]
    anchors = AnchorGeneratorWithAnchorShape(feature_map_scales=[2 ** i for i in range(levels)],
                                             base_anchor_shapes=[s[::-1] for s in first["shapes"]])
    net = RetinaNet(spatial_dims=3, num_classes=num_classes, num_anchors=len(first["shapes"]),
                    feature_extractor=fpn, size_divisible=divisible)
    detector = RetinaNetDetector(net, anchors, debug=False)
    detector.set_atss_matcher(num_candidates=det["matcher"]["num_candidates"], center_in_gt=False)
    s = det["sampler"]
    detector.set_hard_negative_sampler(batch_size_per_image=s["batch_size_per_image"],
                                       positive_fraction=s["positive_fraction"], min_neg=s["min_neg"],
                                       pool_size=s["pool_size"])
    detector.set_target_keys(box_key="box", label_key="label")
    inf = det["inference"]
    detector.set_box_selector_parameters(score_thresh=inf["score_floor"], topk_candidates_per_level=1000,
                                         nms_thresh=inf["nms_iou"], detections_per_img=inf["max_detections"])
    detector.set_sliding_window_inferer(roi_size=list(config["patch_size"][::-1]),
                                        sw_batch_size=config["inference"].get("tile_batch", 1),
                                        overlap=1.0 - config["inference"]["step_fraction"], mode="gaussian",
                                        sigma_scale=config["inference"]["gaussian_sigma_scale"], device=device,
                                        sw_device=device)
    return detector.to(device)


def patch_targets(inst: np.ndarray, classes: dict) -> dict[str, torch.Tensor]:
    """MONAI targets of one (Z, Y, X) instance patch: half-open boxes "xyzxyz" and class labels.

    Instances not in ``classes`` (ignore ids) get no box; parts cut by the patch border give the
    box of what is inside.
    """
    boxes, labels = [], []
    for k, sl in enumerate(ndimage.find_objects(inst.astype(np.int32)), start=1):
        if sl is not None and str(k) in classes:
            boxes.append([s.start for s in sl] + [s.stop for s in sl])
            labels.append(int(classes[str(k)]))
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 6)[:, SWAP]
    return {"box": b, "label": torch.tensor(labels, dtype=torch.long)}


def augment(rng: np.random.Generator, image: np.ndarray, inst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Random flips of a (C, Z, Y, X) image and its (Z, Y, X) instance patch."""
    for axis in range(3):
        if rng.random() < 0.5:
            image, inst = np.flip(image, axis + 1), np.flip(inst, axis)
    return np.ascontiguousarray(image), np.ascontiguousarray(inst)


def train(detector, pre_dir: Path, case_ids: list[str], config: dict, iterations: int, device: torch.device,
          seed: int = 0) -> dict:
    """Train for ``iterations`` batches sampled by volseg's own ``PatchSampler``.

    Sampling: a random case per sample; the plan's foreground oversampling (the last sample of a
    batch of 2) picks a random instance, a random voxel of it and a random offset in the middle
    half of the patch, as volseg's detection training does. Optimizer: SGD (lr 0.01, momentum 0.9,
    Nesterov, weight decay 3e-5, as MONAI's LUNA16 tutorial), the plan's poly schedule and
    gradient clipping. Returns loss and timing records.
    """
    from volseg.data.cases import load_cases
    from volseg.data.sampling import PatchSampler

    tcfg = config["training"]
    cases = load_cases(pre_dir, case_ids, labels="instances")
    classes = {c.case_id: c.properties.get("instances", {}) for c in cases}
    sampler = PatchSampler(cases, config["patch_size"], config["batch_size"],
                           foreground_oversampling=tcfg["foreground_oversampling"], seed=seed, random_offset=True)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    opt = torch.optim.SGD(detector.network.parameters(), lr=tcfg["optimizer"]["lr"], momentum=0.9,
                          nesterov=True, weight_decay=tcfg["optimizer"]["weight_decay"])
    exponent = tcfg["lr_schedule"].get("exponent", 0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: (1 - i / iterations) ** exponent)
    detector.train()
    losses, t0 = [], time.perf_counter()
    for _ in range(iterations):
        batch = sampler.sample()
        images, targets = [], []
        for img, inst, key in zip(batch["data"], batch["seg"], batch["keys"]):
            img, inst = augment(rng, img, inst[0])
            images.append(torch.from_numpy(img).permute(0, 3, 2, 1))
            targets.append({k: v.to(device) for k, v in patch_targets(inst, classes[key]).items()})
        out = detector(torch.stack(images).to(device), targets)
        loss = out[detector.cls_key] + out[detector.box_reg_key]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(detector.network.parameters(), tcfg.get("grad_clip", 12.0))
        opt.step()
        sched.step()
        losses.append(loss.item())
    return {"seconds": time.perf_counter() - t0, "first_loss": losses[0], "last_loss": float(np.mean(losses[-10:]))}


def test_images(images_dir: Path, ending: str) -> dict[str, list[Path]]:
    """Case id → its channel files (``CASE_XXXX<ending>``), sorted."""
    out: dict[str, list[Path]] = {}
    for f in sorted(images_dir.glob(f"*_[0-9][0-9][0-9][0-9]{ending}")):
        out.setdefault(f.name[: -len(ending) - 5], []).append(f)
    return out


@torch.no_grad()
def predict(detector, images_dir: Path, out_dir: Path, plans: dict, config: dict, class_names: list[str],
            device: torch.device) -> Path:
    """Detect every case of ``images_dir``; writes ``CASE_boxes.json`` and ``candidates.csv`` to ``out_dir``.

    Each case is read, preprocessed with the plan (volseg's ``preprocess_image``), run through
    MONAI's sliding window (the plan's patch, tile batch, overlap and Gaussian weights, no
    test-time mirroring), and its boxes go back to input voxels (``boxes_to_input_grid``) and
    world coordinates (``case_boxes_record``).
    """
    from volseg.detection.export import (boxes_to_input_grid, case_boxes_record, write_candidates_csv,
                                         write_case_boxes)
    from volseg.io.nifti import read_image
    from volseg.preprocessing.case import preprocess_image

    out_dir.mkdir(parents=True, exist_ok=True)
    detector.eval()
    ending = plans["dataset"].get("file_ending", ".nii.gz")
    for case_id, files in test_images(images_dir, ending).items():
        read = [read_image(f, np.float32) for f in files]
        geometry = read[0][1]
        data, props = preprocess_image(np.stack([a for a, _ in read]), geometry, plans, config)
        image = torch.from_numpy(data).permute(0, 3, 2, 1)[None].to(device)
        result = detector(image, use_inferer=True)[0]
        boxes = result[detector.target_box_key].cpu().numpy().astype(np.float64).reshape(-1, 6)[:, SWAP]
        scores = result[detector.pred_score_key].cpu().numpy()
        labels = result[detector.target_label_key].cpu().numpy()
        boxes = boxes_to_input_grid(boxes, props)
        write_case_boxes(out_dir, case_id, case_boxes_record(case_id, boxes, scores, labels, geometry, class_names))
    return write_candidates_csv(out_dir)
