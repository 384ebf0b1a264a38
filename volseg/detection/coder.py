"""Box regression deltas relative to anchors: encode ground truth, decode predictions.

Boxes and anchors are (z0, y0, x0, z1, y1, x1) in voxels, half-open (see
:mod:`volseg.detection.boxes`). With centres ``c`` and extents ``e`` (``e = hi - lo``) of a
box ``b`` and an anchor ``a``, the six deltas, in this order, are::

    (dz, dy, dx) = w[:3] * (c_b - c_a) / e_a        centre offsets in anchor extents
    (dd, dh, dw) = w[3:] * log(e_b / e_a)           log extent ratios (d = z, h = y, w = x)

and decoding inverts them, clamping the log ratios at ``clip`` before ``exp``.

The arithmetic is MONAI's :class:`monai.apps.detection.utils.box_coder.BoxCoder`. MONAI names
its 3D boxes ``xyzxyz`` = (x1, y1, z1, x2, y2, z2) and its deltas (dx, dy, dz, dw, dh, dd),
but it only pairs coordinate ``i`` with ``i + 3`` (centre ``(b[i] + b[i+3]) / 2``, extent
``b[i+3] - b[i]``, ``TO_REMOVE = 0``), so volseg's z, y, x-ordered boxes go in unchanged
and the deltas come out z, y, x-ordered: (dz, dy, dx, dd, dh, dw). What this module adds:
any leading batch dimensions (MONAI's coder takes (N, 6) only), anchors broadcast against
them, and input checks with readable errors.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

DEFAULT_WEIGHTS = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
DEFAULT_CLIP = math.log(1000.0 / 16)   # torchvision's and MONAI's bound on the log extent ratio


class BoxCoder:
    """Encodes boxes as deltas relative to anchors and decodes deltas back to boxes.

    Args:
        weights: Six positive weights of (dz, dy, dx, dd, dh, dw); larger weights give
            larger regression targets for the same box.
        clip: Upper bound applied to the (unweighted) log extent ratios before ``exp`` when
            decoding, so that a wild prediction cannot overflow; ``log(1000 / 16)`` by
            default (a box at most 62.5 times its anchor per axis).

    Example:
        >>> coder = BoxCoder()
        >>> anchors = torch.tensor([[0., 0., 0., 4., 8., 8.]])
        >>> boxes = torch.tensor([[1., 0., 0., 5., 8., 16.]])
        >>> deltas = coder.encode(boxes, anchors)        # (dz, dy, dx, dd, dh, dw)
        >>> [round(v, 3) for v in deltas[0].tolist()]
        [0.25, 0.0, 0.5, 0.0, 0.0, 0.693]
        >>> torch.allclose(coder.decode(deltas, anchors), boxes)
        True
    """

    def __init__(self, weights: Sequence[float] = DEFAULT_WEIGHTS, clip: float = DEFAULT_CLIP) -> None:
        from monai.apps.detection.utils.box_coder import BoxCoder as MonaiBoxCoder

        w = [float(v) for v in weights]
        if len(w) != 6 or not all(math.isfinite(v) and v > 0 for v in w):
            raise ValueError(f"weights: expected 6 positive weights (dz, dy, dx, dd, dh, dw), got {list(weights)}")
        if not (math.isfinite(clip) and clip > 0):
            raise ValueError(f"clip: expected a positive bound on the log extent ratio, got {clip}")
        self.weights, self.clip = tuple(w), float(clip)
        self._monai = MonaiBoxCoder(weights=self.weights, boxes_xform_clip=self.clip)

    def encode(self, boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Regression targets that move ``anchors`` onto ``boxes``.

        Args:
            boxes: (..., 6) float boxes (z0, y0, x0, z1, y1, x1), voxels, positive extents.
            anchors: (..., 6) anchors, same format, broadcastable to ``boxes`` (e.g. (N, 6)
                against (B, N, 6)).

        Returns:
            (..., 6) deltas (dz, dy, dx, dd, dh, dw), the broadcast shape, dtype of ``boxes``.

        Raises:
            ValueError: The last dimension is not 6, shapes do not broadcast, or a box or
                anchor has a non-positive extent (its log ratio would be infinite).
        """
        boxes, anchors = _broadcast(boxes, anchors, "boxes")
        _check_extents(boxes, "boxes")
        _check_extents(anchors, "anchors")
        shape = boxes.shape
        if boxes.numel() == 0:
            return boxes.new_zeros(shape)
        flat = self._monai.encode_single(boxes.reshape(-1, 6), anchors.reshape(-1, 6).to(boxes.dtype))
        return flat.reshape(shape)

    def decode(self, deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Boxes that ``deltas`` describe relative to ``anchors``; differentiable in ``deltas``.

        Args:
            deltas: (..., 6) deltas (dz, dy, dx, dd, dh, dw), e.g. (B, N, 6) from a box head.
            anchors: (..., 6) anchors (z0, y0, x0, z1, y1, x1), voxels, broadcastable to ``deltas``.

        Returns:
            (..., 6) boxes (z0, y0, x0, z1, y1, x1), voxels, dtype of ``deltas``; extents are
            positive, at most ``exp(clip)`` times the anchor's.

        Raises:
            ValueError: The last dimension is not 6, shapes do not broadcast, or the deltas are
                not finite.
        """
        deltas, anchors = _broadcast(deltas, anchors, "deltas")
        shape = deltas.shape
        if deltas.numel() == 0:
            return deltas.reshape(shape) * 0   # keeps the (empty) graph to the deltas
        if not torch.isfinite(deltas).all():
            raise ValueError("deltas: expected finite values, found NaN or Inf")
        flat = self._monai.decode_single(deltas.reshape(-1, 6), anchors.reshape(-1, 6))
        return flat.reshape(shape).to(deltas.dtype)


def _broadcast(values: torch.Tensor, anchors: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``values`` and ``anchors`` expanded to a common (..., 6) shape (anchors on values' device)."""
    if values.shape[-1:] != (6,) or anchors.shape[-1:] != (6,):
        raise ValueError(f"{name} and anchors: expected (..., 6) boxes (z0, y0, x0, z1, y1, x1), got shapes "
                         f"{tuple(values.shape)} and {tuple(anchors.shape)}")
    if not values.is_floating_point():
        values = values.float()
    anchors = anchors.to(device=values.device, dtype=values.dtype)
    try:
        shape = torch.broadcast_shapes(values.shape, anchors.shape)
    except RuntimeError as err:
        raise ValueError(f"{name} {tuple(values.shape)} and anchors {tuple(anchors.shape)} do not broadcast") from err
    return values.expand(shape), anchors.expand(shape)


def _check_extents(boxes: torch.Tensor, name: str) -> None:
    extent = boxes[..., 3:] - boxes[..., :3]
    if extent.numel() and not bool((extent > 0).all()):
        raise ValueError(f"{name}: expected positive extents (z1 > z0, y1 > y0, x1 > x0), found "
                         f"min extent {float(extent.min())}")
