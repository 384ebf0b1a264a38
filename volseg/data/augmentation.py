"""Augmentation parameters (a plain dict stored in the plan) and their batchgenerators pipeline.

:func:`default_augmentation` decides the parameters once, at planning time (nnU-Net v2's
defaults); :func:`build_transforms` turns a (possibly hand-edited) parameter dict into a
batchgenerators ``Compose`` that runs in the loader's background processes.

Per-sample pipeline (training): spatial (rotation, scaling, optional elastic deformation about
the patch centre, :mod:`volseg.data.spatial`) → Gaussian noise → Gaussian blur →
multiplicative brightness → contrast → low-resolution simulation (nearest down, linear up, in
torch) → inverted gamma → gamma →
mirroring → deep-supervision targets → torch.  Validation: patch read → deep-supervision targets → torch.

Channels: the spatial transform and mirroring apply the *same* geometry to every channel of a
sample (one coordinate grid per sample), so co-registered channels
(e.g. two timepoints) stay aligned.  Intensity transforms draw their parameters per channel
when ``"per_channel"`` is true (nnU-Net's behaviour), independently otherwise.

Anisotropic data (coarsest / finest spacing > 3, or a patch flat along one axis): spatial
augmentation is 'dummy 2D', as in nnU-Net: rotation and scaling happen in the plane of the
two fine axes, the same for every slice, and low-resolution simulation skips the coarse axis.
"""

from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
from batchgenerators.transforms.abstract_transforms import AbstractTransform, Compose
from batchgenerators.transforms.color_transforms import (
    BrightnessMultiplicativeTransform,
    ContrastAugmentationTransform,
    GammaTransform,
)
from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
from batchgenerators.transforms.spatial_transforms import MirrorTransform

from volseg.data.spatial import WindowSpatialTransform

ANISOTROPY_THRESHOLD = 3.0
AUGMENTATION_VERSION = 1


def _dummy_2d_axis(patch_size: Sequence[int], spacing: Sequence[float]) -> int | None:
    """The coarse axis when in-plane augmentation is needed, else None."""
    spacing, patch = np.asarray(spacing, float), np.asarray(patch_size, float)
    coarse = int(np.argmax(spacing))
    if spacing[coarse] / spacing.min() > ANISOTROPY_THRESHOLD:
        return coarse
    flat = int(np.argmin(patch))
    if patch.max() / patch[flat] > ANISOTROPY_THRESHOLD:
        return flat
    return None


def default_augmentation(patch_size: Sequence[int], spacing: Sequence[float],
                         mirror_axes: Sequence[int] = (0, 1, 2)) -> dict:
    """The augmentation parameters the planner stores in ``plans.json`` (nnU-Net v2's defaults).

    Args:
        patch_size: Patch size (z, y, x), voxels.
        spacing: Target spacing (z, y, x), mm.
        mirror_axes: Spatial axes (0 = z) to mirror along with probability 0.5 each.

    Returns:
        A JSON-serializable dict; every ``"p"`` is a per-sample probability (0 disables).
        ``rotation.degrees`` holds one [low, high] range per axis of rotation (axis 0 = about z).

    Example:
        >>> params = default_augmentation([64, 128, 128], [3.0, 0.8, 0.8])
        >>> params["dummy_2d_axis"], params["rotation"]["degrees"]
        (0, [[-180.0, 180.0], [0.0, 0.0], [0.0, 0.0]])
    """
    if len(patch_size) != 3 or len(spacing) != 3:
        raise ValueError(f"expected 3D patch_size and spacing, got {list(patch_size)} and {list(spacing)}")
    if any(a not in (0, 1, 2) for a in mirror_axes):
        raise ValueError(f"mirror_axes must be among 0, 1, 2, got {list(mirror_axes)}")
    axis = _dummy_2d_axis(patch_size, spacing)
    degrees = [[-30.0, 30.0]] * 3 if axis is None else [[-180.0, 180.0] if a == axis else [0.0, 0.0]
                                                        for a in range(3)]
    return {
        "version": AUGMENTATION_VERSION,
        "dummy_2d_axis": axis,
        "rotation": {"p": 0.2, "degrees": [list(d) for d in degrees]},
        "scaling": {"p": 0.2, "range": [0.7, 1.4], "independent_axes": False},
        "elastic": {"p": 0.0, "alpha": [0.0, 200.0], "sigma": [9.0, 13.0]},
        "interpolation": {"image_order": 1, "label_order": 1},  # linear, as grid_sample-based pipelines do
        "gaussian_noise": {"p": 0.1, "variance": [0.0, 0.1], "per_channel": True},
        "gaussian_blur": {"p": 0.2, "sigma": [0.5, 1.0], "per_channel": True, "p_per_channel": 0.5},
        "brightness": {"p": 0.15, "range": [0.75, 1.25], "per_channel": True},
        "contrast": {"p": 0.15, "range": [0.75, 1.25], "per_channel": True},
        "low_resolution": {"p": 0.25, "zoom": [0.5, 1.0], "per_channel": True, "p_per_channel": 0.5},
        "gamma_inverted": {"p": 0.1, "range": [0.7, 1.5], "per_channel": True, "retain_stats": True},
        "gamma": {"p": 0.3, "range": [0.7, 1.5], "per_channel": True, "retain_stats": True},
        "mirror_axes": [int(a) for a in mirror_axes],
    }


def no_intensity_augmentation(params: dict) -> dict:
    """A copy of ``params`` with every intensity transform disabled (p = 0)."""
    out = copy.deepcopy(params)
    for key in ("gaussian_noise", "gaussian_blur", "brightness", "contrast", "low_resolution",
                "gamma_inverted", "gamma"):
        out[key]["p"] = 0.0
    return out


def _rotations(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """batchgenerators' ``rotate_coords_3d`` matrices R_x(a) · R_y(b) · R_z(c) (x = axis 0), (n, 3, 3)."""
    def rot(t, i, j):
        m = np.tile(np.eye(3), (len(t), 1, 1))
        m[:, i, i], m[:, i, j], m[:, j, i], m[:, j, j] = np.cos(t), -np.sin(t), np.sin(t), np.cos(t)
        return m
    return rot(a, 1, 2) @ rot(b, 2, 0) @ rot(c, 0, 1)


def _angle_grid(low_deg: float, high_deg: float) -> np.ndarray:
    """Angles (rad) spanning [low, high] densely enough to find the widest rotated box."""
    grid = np.linspace(low_deg, high_deg, 13)
    quarter = np.arange(-360.0, 361.0, 45.0)
    return np.deg2rad(np.concatenate([grid, quarter[(quarter >= low_deg) & (quarter <= high_deg)]]))


def sample_size(patch_size: Sequence[int], params: dict | None) -> list[int]:
    """Size of the window to cut before the spatial transform so that it brings in no border.

    The window must hold the patch after the largest rotation in ``params`` (bounding box over
    a grid of angles) and the largest zoom-out (scale > 1 samples a larger region).  Along the
    coarse axis of dummy-2D augmentation it equals the patch.  ``size - patch`` is even, so
    the patch is the exact centre of the window.  (Elastic deformation is not accounted for,
    as in nnU-Net.)

    Args:
        patch_size: Final patch size (z, y, x).
        params: Augmentation parameters, or None (no augmentation: the patch itself).

    Returns:
        Window size (z, y, x), voxels.
    """
    patch = np.asarray(patch_size, dtype=float)
    if params is None:
        return [int(p) for p in patch]
    half = (patch - 1) / 2  # the coordinate grid spans [-half, half] around the centre
    extent = half.copy()
    axis = params.get("dummy_2d_axis")
    if params["rotation"]["p"] > 0:
        degrees = params["rotation"]["degrees"]
        if axis is not None:  # rotation in the plane of the two other axes, angle range of `axis`
            ax = [a for a in range(3) if a != axis]
            for t in _angle_grid(*degrees[axis]):
                r = np.abs([[np.cos(t), np.sin(t)], [np.sin(t), np.cos(t)]])
                extent[ax] = np.maximum(extent[ax], r @ half[ax])
        else:
            a, b, c = (g.ravel() for g in np.meshgrid(*[_angle_grid(*d) for d in degrees], indexing="ij"))
            # coordinates transform as c' = c · R, i.e. extent_i = sum_j |R_ji| half_j
            extent = np.maximum(extent, (np.abs(_rotations(a, b, c)).transpose(0, 2, 1) @ half).max(axis=0))
    if params["scaling"]["p"] > 0:
        extent = extent * max(1.0, float(params["scaling"]["range"][1]))
    size = np.maximum(patch, np.ceil(2 * extent + 1 - 1e-6))
    size = size + (size - patch) % 2
    if axis is not None:
        size[axis] = patch[axis]
    return [int(s) for s in size]


class DeepSupervisionTargets(AbstractTransform):
    """Label map → one target per deep-supervision scale (nearest neighbour, order 0).

    Output voxel ``o`` of an axis scaled by ``s`` takes input voxel ``floor((o + 0.5) / s)``;
    the output size is ``round(n * s)`` (nnU-Net's rule).

    Args:
        scales: Per-axis factors, one list per output, e.g. ``[[1, 1, 1], [0.5, 0.5, 0.5]]``;
            None gives a single full-resolution target instead of a list.
        input_key, output_key: Batch entries read (b, 1, z, y, x) and written.
    """

    def __init__(self, scales: Sequence[Sequence[float]] | None, input_key: str = "seg",
                 output_key: str = "target") -> None:
        self.scales = None if scales is None else [[float(f) for f in s] for s in scales]
        self.input_key, self.output_key = input_key, output_key

    @staticmethod
    def downsample(seg: np.ndarray, scale: Sequence[float]) -> np.ndarray:
        """Nearest-neighbour downsampling of (b, c, z, y, x) by per-axis ``scale``; int16 result."""
        index = []
        for n, s in zip(seg.shape[2:], scale):
            m = max(1, int(round(n * s)))
            index.append(np.minimum(((np.arange(m) + 0.5) / s).astype(np.int64), n - 1))
        return seg[(slice(None), slice(None), *np.ix_(*index))].astype(np.int16)

    def __call__(self, **batch):
        seg = batch.pop(self.input_key)
        if self.scales is None:
            batch[self.output_key] = seg.astype(np.int16)
        else:
            batch[self.output_key] = [self.downsample(seg, s) for s in self.scales]
        return batch


class SimulateLowResolution(AbstractTransform):
    """Resample channels to a coarser grid (nearest) and back (linear), with torch.

    Per sample with probability ``p_per_sample``; then per channel with ``p_per_channel`` a zoom
    drawn uniformly from ``zoom`` (one per channel when ``per_channel``, else one per sample).
    The coarse grid has ``round(n · zoom)`` voxels per axis, except along ``ignore_axes``.

    Args:
        zoom: (low, high) zoom range, ≤ 1.
        per_channel, p_per_channel, p_per_sample: As above.
        ignore_axes: Spatial axes (0 = z) kept at full resolution (the coarse axis of dummy-2D data).

    Input/output: ``"data"`` float32 (b, C, z, y, x), changed in place.
    """

    def __init__(self, zoom: Sequence[float], per_channel: bool = True, p_per_channel: float = 0.5,
                 p_per_sample: float = 0.25, ignore_axes: Sequence[int] | None = None) -> None:
        self.zoom, self.per_channel = (float(zoom[0]), float(zoom[1])), per_channel
        self.p_per_channel, self.p_per_sample = p_per_channel, p_per_sample
        self.ignore_axes = tuple(ignore_axes or ())

    def _target(self, shape: np.ndarray) -> list[int]:
        target = np.maximum(np.round(shape * np.random.uniform(*self.zoom)), 1).astype(int)
        target[list(self.ignore_axes)] = shape[list(self.ignore_axes)]
        return [int(t) for t in target]

    def __call__(self, **batch):
        import torch
        import torch.nn.functional as F

        data = batch["data"]
        shape = np.asarray(data.shape[2:])
        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(shape)]
        for b in range(data.shape[0]):
            if np.random.uniform() >= self.p_per_sample:
                continue
            target = None if self.per_channel else self._target(shape)
            for c in range(data.shape[1]):
                if np.random.uniform() >= self.p_per_channel:
                    continue
                size = self._target(shape) if self.per_channel else target
                x = torch.from_numpy(np.ascontiguousarray(data[b, c], np.float32))[None, None]
                with torch.no_grad():
                    coarse = F.interpolate(x, size=size, mode="nearest-exact")
                    data[b, c] = F.interpolate(coarse, size=[int(n) for n in shape], mode=mode,
                                               align_corners=False)[0, 0].numpy()
        return batch


class ToTorch(AbstractTransform):
    """``data`` → float32 tensor, ``target`` → tensors (zero-copy): an array or a list of arrays
    (label maps) become int16 tensors; a dict (e.g. detection: segmentation targets, boxes,
    classes) has each of its arrays converted with its own dtype, in lists and nested dicts."""

    def __call__(self, **batch):
        import torch

        batch["data"] = torch.from_numpy(np.ascontiguousarray(batch["data"], dtype=np.float32))
        t = batch["target"]
        if isinstance(t, dict):
            batch["target"] = _to_tensors(t)
            return batch
        conv = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.int16))
        batch["target"] = [conv(a) for a in t] if isinstance(t, list) else conv(t)
        return batch


def _to_tensors(value):
    """NumPy arrays inside dicts and lists → torch tensors of the same dtype."""
    import torch

    if isinstance(value, dict):
        return {k: _to_tensors(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_tensors(v) for v in value]
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    return value


def _intensity(params: dict) -> list[AbstractTransform]:
    out = []
    g = params["gaussian_noise"]
    if g["p"] > 0:
        out.append(GaussianNoiseTransform(tuple(g["variance"]), p_per_sample=g["p"], per_channel=g["per_channel"]))
    g = params["gaussian_blur"]
    if g["p"] > 0:
        out.append(GaussianBlurTransform(tuple(g["sigma"]), different_sigma_per_channel=g["per_channel"],
                                         p_per_channel=g["p_per_channel"], p_per_sample=g["p"]))
    g = params["brightness"]
    if g["p"] > 0:
        out.append(BrightnessMultiplicativeTransform(tuple(g["range"]), per_channel=g["per_channel"],
                                                     p_per_sample=g["p"]))
    g = params["contrast"]
    if g["p"] > 0:
        out.append(ContrastAugmentationTransform(tuple(g["range"]), per_channel=g["per_channel"], p_per_sample=g["p"]))
    g = params["low_resolution"]
    if g["p"] > 0:
        axis = params.get("dummy_2d_axis")
        out.append(SimulateLowResolution(g["zoom"], per_channel=g["per_channel"], p_per_channel=g["p_per_channel"],
                                         p_per_sample=g["p"], ignore_axes=None if axis is None else (axis,)))
    for key, invert in (("gamma_inverted", True), ("gamma", False)):
        g = params[key]
        if g["p"] > 0:
            out.append(GammaTransform(tuple(g["range"]), invert_image=invert, per_channel=g["per_channel"],
                                      retain_stats=g["retain_stats"], p_per_sample=g["p"]))
    return out


def build_transforms(params: dict | None, patch_size: Sequence[int],
                     deep_supervision_scales: Sequence[Sequence[float]] | None = None,
                     is_training: bool = True, to_torch: bool = True, targets: AbstractTransform | None = None) -> Compose:
    """The batchgenerators pipeline for batches from :class:`volseg.data.sampling.PatchSampler`.

    Args:
        params: Augmentation parameters (:func:`default_augmentation`); ignored when not training.
            None while training: no augmentation, only the patch read.
        patch_size: Final patch size (z, y, x).
        deep_supervision_scales: Per-axis factors per output (e.g. ``[[1, 1, 1], [0.5, 0.5, 0.5]]``),
            or None for one full-resolution target.
        is_training: Augment (training) or not (validation).
        targets: The transform that turns the augmented ``seg`` into ``target`` (a task's
            :meth:`~volseg.tasks.base.Task.targets`); default
            ``DeepSupervisionTargets(deep_supervision_scales)``.
        to_torch: End with :class:`ToTorch`; the loader passes False and converts in the consuming
            process (torch tensors sent from worker processes travel as file descriptors that
            die with the worker, which breaks batches still in flight at shutdown).

    Returns:
        A transform mapping ``{"windows": [Window, ...], "keys"}`` (from
        :meth:`~volseg.data.sampling.PatchSampler.sample_windows`) or ``{"data": (b, C, *window),
        "seg": (b, 1, *window), "keys"}`` (from :meth:`~volseg.data.sampling.PatchSampler.sample`) to
        ``{"data": float32 tensor (b, C, pz, py, px), "target": int16 tensor (b, 1, ...) or a
        list of them (one per scale), "keys"}``.

    Example:
        >>> t = build_transforms(default_augmentation([32] * 3, [1.0] * 3), [32] * 3, [[1, 1, 1], [.5, .5, .5]])
    """
    if is_training and params is not None:
        if params.get("version", AUGMENTATION_VERSION) != AUGMENTATION_VERSION:
            raise ValueError(f"augmentation parameters version {params.get('version')} is not supported "
                             f"(expected {AUGMENTATION_VERSION})")
        steps = [WindowSpatialTransform(patch_size, params), *_intensity(params)]
        if params["mirror_axes"]:
            steps.append(MirrorTransform(tuple(params["mirror_axes"])))
    else:
        steps = [WindowSpatialTransform(patch_size, None)]
    steps.append(targets if targets is not None else DeepSupervisionTargets(deep_supervision_scales))
    if to_torch:
        steps.append(ToTorch())
    return Compose(steps)
