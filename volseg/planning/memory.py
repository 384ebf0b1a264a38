"""Analytic estimates of training memory and compute for a U-Net plan (no GPU needed).

Memory: every convolution block keeps three tensors for the backward pass (conv output,
normalization output, activation output); a decoder stage also keeps its transposed-conv
output and the concatenated skip. Their element count times the batch, times the bytes
per element (2 with mixed precision on CUDA, 4 in fp32 on the CPU), plus 16 bytes per
parameter (weights, gradients, momentum, a copy during the step) and a fixed device
overhead, gives the estimate.

Reference values (how the constants were checked): nnU-Net's default topology
(32→320 features, 6 stages, first stride 1×2×2) at patch 80×160×160 and batch 2
estimates at 13.6 GB in fp32, where nnU-Net measures about 12 GB of resident memory on a
2-core CPU (the estimate errs on the safe side); at patch 128³ and batch 2 with mixed
precision it estimates at 6.9 GB on CUDA, inside the 8 GB GPU target that configuration
is planned for. Compute: that CPU configuration is 8.4 TFLOP per iteration and runs at
about 70 s per iteration on 2 cores, i.e. about 120 GFLOP/s of convolution throughput.

Detection heads: a network dict with ``detection_levels`` (a ``retina_unet``) adds its two
heads (classification and box regression, :class:`~volseg.networks.retina_unet.DetectionHead`)
on every detection level: a 1x1x1 projection to ``head_channels``, ``head_convs`` 3x3x3
conv-norm-act layers (three tensors kept each) and a 3x3x3 output conv of ``A * K`` or
``A * 6`` channels, at the voxels of that level.
"""

from __future__ import annotations

import numpy as np

CUDA_OVERHEAD_GB = 1.0  # context, cuDNN workspace, allocator slack


def _stage_voxels(patch_size: list[int], strides: list[list[int]]) -> list[float]:
    size = np.asarray(patch_size, dtype=float)
    out = []
    for s in strides:
        size = size / np.asarray(s)
        out.append(float(np.prod(size)))
    return out


def activation_elements(network: dict, patch_size: list[int], num_outputs: int) -> float:
    """Elements kept for the backward pass of one sample (see the module docstring)."""
    vox = _stage_voxels(patch_size, network["strides"])
    feats = network["features_per_stage"]
    enc = network["n_conv_per_stage"]
    dec = network["n_conv_per_stage_decoder"]
    total = sum(3 * n * f * v for n, f, v in zip(enc, feats, vox))
    for s in range(len(feats) - 1):
        f, v = feats[s], vox[s]
        total += v * f * (1 + 2 + 3 * dec[s])  # transposed conv, concat, conv blocks
        if network.get("deep_supervision", True) or s == 0:
            total += v * num_outputs
    return float(total)


def parameter_count(network: dict, in_channels: int, num_outputs: int) -> int:
    """Number of weights of the plain U-Net described by ``network`` (biases included)."""
    feats, kernels = network["features_per_stage"], network["kernel_sizes"]
    n = 0
    prev = in_channels
    for s, f in enumerate(feats):
        k = int(np.prod(kernels[s]))
        for i in range(network["n_conv_per_stage"][s]):
            n += (prev if i == 0 else f) * f * k + 3 * f
        prev = f
    for s in range(len(feats) - 2, -1, -1):
        f, k = feats[s], int(np.prod(kernels[s]))
        n += feats[s + 1] * f * int(np.prod(network["strides"][s + 1]))  # transposed conv
        for i in range(network["n_conv_per_stage_decoder"][s]):
            n += (2 * f if i == 0 else f) * f * k + 3 * f
        n += f * num_outputs + num_outputs
    return int(n)


def _head_layout(network: dict, patch_size: list[int], num_outputs: int) -> tuple[list[tuple[int, float]], tuple, int, int]:
    """``([(channels, voxels) per detection level], (cls, box) output channels, head_channels,
    head_convs)``; no levels without heads."""
    vox = _stage_voxels(patch_size, network["strides"])
    levels = [(network["features_per_stage"][lv], vox[lv]) for lv in network.get("detection_levels") or []]
    anchors = int(network.get("num_anchors", 0))
    outs = (anchors * max(1, num_outputs - 1), anchors * 6)     # classification (foreground classes), boxes
    return levels, outs, int(network.get("head_channels", 0)), int(network.get("head_convs", 0))


def head_activation_elements(network: dict, patch_size: list[int], num_outputs: int) -> float:
    """Elements the detection heads keep for the backward pass of one sample (0 without heads)."""
    levels, outs, ch, convs = _head_layout(network, patch_size, num_outputs)
    return float(sum(v * (ch * (1 + 3 * convs) + out) for out in outs for _, v in levels))


def head_parameter_count(network: dict, num_outputs: int) -> int:
    """Weights of the two detection heads (biases and GroupNorm affine included; 0 without heads)."""
    levels, outs, ch, convs = _head_layout(network, [1, 1, 1], num_outputs)
    if not levels:
        return 0
    projections = sum(c * ch + ch for c, _ in levels)
    return int(sum(projections + convs * (ch * ch * 27 + 3 * ch) + ch * out * 27 + out for out in outs))


def head_flop(network: dict, patch_size: list[int], num_outputs: int) -> float:
    """Forward FLOP of the detection heads for one sample (0 without heads)."""
    levels, outs, ch, convs = _head_layout(network, patch_size, num_outputs)
    return float(sum(2 * v * (c * ch + convs * ch * ch * 27 + ch * out * 27) for out in outs for c, v in levels))


def estimate_memory_gb(network: dict, patch_size: list[int], batch_size: int, in_channels: int,
                       num_outputs: int, device: str) -> float:
    """Estimated peak training memory in GB (1e9 bytes) on ``device`` ("cuda" or "cpu")."""
    bytes_per = 2 if device == "cuda" else 4
    elements = activation_elements(network, patch_size, num_outputs) + head_activation_elements(
        network, patch_size, num_outputs)
    act = elements * batch_size * bytes_per
    params = (parameter_count(network, in_channels, num_outputs) + head_parameter_count(network, num_outputs)) * 16
    overhead = CUDA_OVERHEAD_GB * 1e9 if device == "cuda" else 0.0
    return float((act + params + overhead) / 1e9)


def estimate_gflop(network: dict, patch_size: list[int], batch_size: int, in_channels: int,
                   num_outputs: int) -> float:
    """Convolution GFLOP of one training iteration (forward + backward ≈ 3 × forward), heads included."""
    vox = _stage_voxels(patch_size, network["strides"])
    feats, kernels = network["features_per_stage"], network["kernel_sizes"]
    flop, prev = 0.0, in_channels
    for s, f in enumerate(feats):
        k = float(np.prod(kernels[s]))
        for i in range(network["n_conv_per_stage"][s]):
            flop += 2 * (prev if i == 0 else f) * f * k * vox[s]
        prev = f
    for s in range(len(feats) - 1):
        f, k = feats[s], float(np.prod(kernels[s]))
        flop += 2 * feats[s + 1] * f * vox[s]
        for i in range(network["n_conv_per_stage_decoder"][s]):
            flop += 2 * (2 * f if i == 0 else f) * f * k * vox[s]
    flop += head_flop(network, patch_size, num_outputs)
    return float(3 * flop * batch_size / 1e9)
