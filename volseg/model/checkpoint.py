"""Checkpoints: weights-only, atomic, tagged with the plan they belong to.

A checkpoint is a dict of tensors and plain Python values (no pickled objects), so
``torch.load(path, weights_only=True)`` reads it. It is written to a temporary file in
the same folder and renamed over the old one: a kill at any moment leaves either the
previous complete checkpoint or the new complete one.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from volseg.errors import ModelError
from volseg.io.atomic import atomic_path

CHECKPOINT_FORMAT = "volseg-checkpoint-1"


def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) atomically to ``path``."""
    state = {"format": CHECKPOINT_FORMAT, **state}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
        with open(tmp, "rb") as f:  # make the bytes durable before the rename
            os.fsync(f.fileno())
    return Path(path)


def load_checkpoint(path: str | os.PathLike, plan_hash: str | None = None, map_location: str = "cpu") -> dict:
    """Read a checkpoint with ``weights_only=True``.

    Args:
        path: ``.pt`` file written by :func:`save_checkpoint`.
        plan_hash: When given, the checkpoint must come from a plan with this hash.

    Raises:
        ModelError: Missing or unreadable file, not a volseg checkpoint, or from another plan.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(path, "checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for damaged files
        raise ModelError(path, f"cannot read checkpoint: {read_failure(e)}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ModelError(path, "not a volseg checkpoint")
    if plan_hash is not None and state.get("plan_hash") != plan_hash:
        raise ModelError(path, f"checkpoint belongs to another plan or configuration (plan hash {state.get('plan_hash')}, "
                         f"expected {plan_hash}); train again or point to the matching model folder")
    return state


def read_failure(error: Exception) -> str:
    """One whole sentence on why ``torch.load(weights_only=True)`` failed.

    Example:
        >>> read_failure(RuntimeError("PytorchStreamReader failed reading zip archive: failed finding central directory"))
        'damaged or not a torch file (RuntimeError: PytorchStreamReader failed reading zip archive: failed finding central directory)'
    """
    import re

    text = str(error)
    if "Weights only load failed" in text:
        named = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        other = re.search(r"(Unsupported operand \S+)", text)
        detail = f" (it names {named.group(1)})" if named else f" ({other.group(1)})" if other else ""
        return f"it holds pickled Python objects, which volseg never unpickles{detail}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = lines[0] if lines else type(error).__name__
    if len(first) > 160:  # cut at a word boundary, never mid-word
        first = first[:160].rsplit(" ", 1)[0] + " …"
    return f"damaged or not a torch file ({type(error).__name__}: {first})"
