"""Learning-rate schedules as pure functions of the iteration."""

from __future__ import annotations

import math


def learning_rate(schedule: dict, base_lr: float, step: int, total_steps: int) -> float:
    """Learning rate at ``step`` of ``total_steps`` (0-based).

    Schedules: ``poly`` (``base_lr * (1 - step / total) ** schedule["exponent"]``; the
    planner writes nnU-Net's 0.9), ``cosine`` and ``constant``.
    """
    name = schedule["name"]
    frac = min(max(step / max(total_steps, 1), 0.0), 1.0)
    if name == "poly":
        return base_lr * (1.0 - frac) ** float(schedule["exponent"])
    if name == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * frac))
    if name == "constant":
        return base_lr
    raise ValueError(f"unknown lr_schedule {name!r}; expected poly, cosine or constant")
