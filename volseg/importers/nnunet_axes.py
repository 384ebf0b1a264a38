"""nnU-Net's ``transpose_forward``, undone: plan values and kernels on untransposed (z, y, x) arrays.

nnU-Net permutes the spatial axes of every image before the network sees it
(``transposed = image.transpose([0, *(1 + a for a in forward)])``, so transposed axis ``i``
is image axis ``forward[i]``) and stores the configuration's spacing, patch size, kernel
sizes, strides and mirroring axes in that transposed order. volseg never transposes:
permuting those values, and the spatial dimensions of every conv and transposed-conv
kernel, back to the image's order gives a network that computes on the image exactly what
nnU-Net's computes on the transposed image, transposed back.
"""

from __future__ import annotations

from typing import Sequence

import torch

IDENTITY = (0, 1, 2)


def check_permutation(value, key: str) -> tuple[int, int, int]:
    """``value`` as a permutation of (0, 1, 2).

    Raises:
        ValueError: Naming ``key``, when ``value`` is not a permutation of 0, 1, 2.
    """
    if not isinstance(value, (list, tuple)) or sorted(value) != [0, 1, 2] \
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ValueError(f"{key} must be a permutation of [0, 1, 2], got {value!r}")
    return tuple(int(v) for v in value)


def inverse(forward: Sequence[int]) -> tuple[int, int, int]:
    """The inverse permutation (nnU-Net's ``transpose_backward``).

    Example:
        >>> inverse((2, 0, 1))
        (1, 2, 0)
    """
    back = [0, 0, 0]
    for i, a in enumerate(forward):
        back[a] = i
    return tuple(back)


def untranspose(values: Sequence, forward: Sequence[int]) -> list:
    """Per-axis values given in nnU-Net's transposed order, in the image's (z, y, x) order.

    Args:
        values: Three values, entry ``i`` for transposed axis ``i`` (= image axis ``forward[i]``).
        forward: ``transpose_forward``.

    Example:
        >>> untranspose([0.7, 3.0, 0.8], (2, 0, 1))  # spacing (x, z, y) → (z, y, x)
        [3.0, 0.8, 0.7]
    """
    out = [None, None, None]
    for i, a in enumerate(forward):
        out[a] = values[i]
    return out


def untranspose_axes(axes: Sequence[int], forward: Sequence[int]) -> list[int]:
    """Transposed axis indices (e.g. mirroring axes) as sorted image axis indices.

    Example:
        >>> untranspose_axes([0, 1], (2, 0, 1))
        [0, 2]
    """
    return sorted(int(forward[a]) for a in axes)


def untranspose_kernel(weight: torch.Tensor, forward: Sequence[int]) -> torch.Tensor:
    """A (out, in, k0, k1, k2) conv or (in, out, k0, k1, k2) transposed-conv weight of nnU-Net's
    transposed frame, with its spatial dimensions in the image's (z, y, x) order (a contiguous copy).

    Example:
        >>> untranspose_kernel(torch.zeros(4, 2, 1, 3, 5), (2, 0, 1)).shape
        torch.Size([4, 2, 3, 5, 1])
    """
    back = inverse(forward)
    return weight.permute(0, 1, *(2 + back[a] for a in range(3))).contiguous()
