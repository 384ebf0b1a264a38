"""Reading nnU-Net v2 checkpoints (``fold_K/checkpoint_final.pth``) without unpickling code.

An nnU-Net checkpoint is a pickled dict: ``network_weights`` (the state dict),
``optimizer_state``, ``grad_scaler_state``, ``logging`` (lists of NumPy floats),
``_best_ema``, ``current_epoch``, ``init_args`` (the trainer's constructor arguments: the
plans and dataset dicts, the configuration name, the fold, a ``torch.device``),
``trainer_name`` and ``inference_allowed_mirroring_axes``.

It is read with ``torch.load(weights_only=True)``, which rebuilds only tensors, plain Python
values and the globals of :data:`ALLOWED_GLOBALS`: the NumPy scalar and dtype constructors
that the logged floats need. Any other global, e.g. a ``__reduce__`` that names
``os.system``, stops the load before it is called.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from volseg.errors import ModelError

# fully qualified names as pickles spell them; NumPy 1 writes numpy.core..., NumPy 2 numpy._core...
# The logged losses and Dice scores are NumPy float32 / float64 scalars: the scalar constructor, the
# dtype constructor, and the classes of the two dtypes (whose state the unpickler sets). The
# ``torch.device`` in ``init_args`` is among the types torch rebuilds anyway.
ALLOWED_GLOBALS = (
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.dtype",
    "numpy.dtypes.Float32DType",
    "numpy.dtypes.Float64DType",
)


def allowed_globals() -> list[tuple[object, str]]:
    """``(object, pickled name)`` pairs of :data:`ALLOWED_GLOBALS` for ``torch.serialization.safe_globals``."""
    import numpy as np

    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # NumPy 1
        from numpy.core.multiarray import scalar
    objects = {"numpy.core.multiarray.scalar": scalar, "numpy._core.multiarray.scalar": scalar,
               "numpy.dtype": np.dtype, "numpy.dtypes.Float32DType": type(np.dtype(np.float32)),
               "numpy.dtypes.Float64DType": type(np.dtype(np.float64))}
    return [(objects[n], n) for n in ALLOWED_GLOBALS]


@dataclass(frozen=True)
class NnunetCheckpoint:
    """What the importer takes from one nnU-Net checkpoint.

    Attributes:
        path: The ``.pth`` file.
        weights: ``network_weights``: parameter name → tensor, as nnU-Net's network names them.
        trainer_name: e.g. ``"nnUNetTrainer"``.
        configuration: ``init_args["configuration"]``, or None when the checkpoint lacks it.
        mirror_axes: ``inference_allowed_mirroring_axes``: spatial axes (0 = first axis of the
            transposed array nnU-Net's network sees); None: no mirroring at inference.
        epoch: ``current_epoch`` (epochs completed), or None.
        sha256: Hex digest of the file.
    """

    path: Path
    weights: dict[str, torch.Tensor]
    trainer_name: str
    configuration: str | None
    mirror_axes: tuple[int, ...] | None
    epoch: int | None
    sha256: str


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_pickled_dict(path: str | os.PathLike) -> dict:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with :func:`allowed_globals` only.

    Raises:
        ModelError: Missing file, a pickled global outside the allow-list (named), a damaged
            file, or a top level that is not a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(path, "checkpoint not found")
    try:
        with torch.serialization.safe_globals(allowed_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for refused globals and damaged files
        raise ModelError(path, f"cannot read nnU-Net checkpoint: {_load_failure(e)}") from None
    if not isinstance(state, dict):
        raise ModelError(path, f"not an nnU-Net checkpoint: it holds a {type(state).__name__}, expected a dict")
    return state


def _load_failure(error: Exception) -> str:
    text = str(error)
    if "Weights only load failed" in text or "weights_only" in text:
        named = re.search(r"unsupported global:?(?: GLOBAL)? (\S+)", text, re.IGNORECASE) \
            or re.search(r"but got <class '([^']+)'>", text)
        other = re.search(r"(Unsupported operand \S+)", text)
        what = named.group(1) if named else other.group(1) if other else "an object of another type"
        return (f"it holds a pickled object volseg does not rebuild ({what}); only tensors, plain values and "
                f"{', '.join(ALLOWED_GLOBALS)} are read")
    from volseg.model.checkpoint import read_failure

    return read_failure(error)


def read_nnunet_checkpoint(path: str | os.PathLike) -> NnunetCheckpoint:
    """Read an nnU-Net v2 ``checkpoint_final.pth`` / ``checkpoint_best.pth`` safely.

    Raises:
        ModelError: Naming ``path``: unreadable (see :func:`load_pickled_dict`), no
            ``network_weights`` dict of tensors, or a malformed ``inference_allowed_mirroring_axes``.
    """
    path = Path(path)
    state = load_pickled_dict(path)
    weights = state.get("network_weights")
    if not isinstance(weights, dict) or not weights:
        raise ModelError(path, "not an nnU-Net checkpoint: no 'network_weights' state dict")
    bad = next((k for k, v in weights.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise ModelError(path, f"network_weights entry {bad!r} is not a tensor")
    axes = state.get("inference_allowed_mirroring_axes")
    if axes is not None:
        if not isinstance(axes, (list, tuple)) or not all(isinstance(a, int) and 0 <= a <= 2 for a in axes):
            raise ModelError(path, f"inference_allowed_mirroring_axes must be null or a list of axes 0-2, got {axes!r}")
        axes = tuple(sorted(set(int(a) for a in axes)))
    init_args = state.get("init_args") if isinstance(state.get("init_args"), dict) else {}
    configuration = init_args.get("configuration")
    epoch = state.get("current_epoch")
    return NnunetCheckpoint(path=path, weights=weights, trainer_name=str(state.get("trainer_name", "unknown")),
                            configuration=configuration if isinstance(configuration, str) else None,
                            mirror_axes=axes, epoch=int(epoch) if isinstance(epoch, int) else None,
                            sha256=file_sha256(path))
