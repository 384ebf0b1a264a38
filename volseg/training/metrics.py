"""Pseudo-Dice on validation patches: true/false positives and false negatives per class."""

from __future__ import annotations

import torch


def confusion_counts(logits: torch.Tensor, target: torch.Tensor, mode: str = "softmax") -> torch.Tensor:
    """Per-class (tp, fp, fn) of one batch.

    Args:
        logits: (B, K, z, y, x) network output at full resolution.
        target: (B, 1, z, y, x) label values (softmax) or (B, K, z, y, x) binary regions (sigmoid).
        mode: "softmax" (classes 1..K-1 scored) or "sigmoid" (every region scored at 0.5).

    Returns:
        (3, K') tensor of counts, K' = K - 1 for softmax, K for sigmoid.
    """
    if mode == "softmax":
        k = logits.shape[1]
        pred = logits.argmax(1)
        tgt = target[:, 0].long()
        rows = []
        for c in range(1, k):
            p, t = pred == c, tgt == c
            rows.append(torch.stack([(p & t).sum(), (p & ~t).sum(), (~p & t).sum()]))
        return torch.stack(rows, 1).double() if rows else torch.zeros(3, 0, dtype=torch.float64)
    pred = logits > 0
    tgt = target.bool()
    dims = (0, 2, 3, 4)
    return torch.stack([(pred & tgt).sum(dims), (pred & ~tgt).sum(dims), (~pred & tgt).sum(dims)]).double()


def dice_from_counts(counts: torch.Tensor) -> list[float]:
    """Dice per class from accumulated (3, K) counts; NaN where a class never occurred."""
    tp, fp, fn = counts
    denom = 2 * tp + fp + fn
    return [float(2 * a / d) if d > 0 else float("nan") for a, d in zip(tp, denom)]
