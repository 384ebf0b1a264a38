"""ONNX export of a fold's network, cached in the model folder and keyed by its weights.

The exported graph takes one fixed-shape float32 tile batch ``image`` (B, C, z, y, x) and
returns the network's outputs flattened in :mod:`torch.utils._pytree` order (a dense network:
one (B, K, z, y, x) logit tensor; Retina U-Net: segmentation, classification and box maps),
followed by the pooled bottleneck features (B, 2 C) that the shift check keeps
(:func:`volseg.shift.features.pool`), one output per call of the first decoder up-sampling.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch.utils._pytree import tree_flatten

from volseg.io.atomic import atomic_path
from volseg.shift.features import bottleneck_input, pool

log = logging.getLogger(__name__)

OPSET = 17
EXPORT_DIR = "export"  # inside fold_K/
_PREFIX = "network-"


class ExportGraph(torch.nn.Module):
    """``net`` with flat outputs: its output leaves, then (``features``) the pooled bottleneck features."""

    def __init__(self, net: torch.nn.Module, features: bool = True) -> None:
        super().__init__()
        self.net = net
        self._bottleneck = bottleneck_input(net) if features else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features: list[torch.Tensor] = []
        handle = None
        if self._bottleneck is not None:
            handle = self._bottleneck.register_forward_pre_hook(lambda _m, args: features.append(pool(args[0])))
        try:
            leaves, _ = tree_flatten(self.net(x))
        finally:
            if handle is not None:
                handle.remove()
        return (*leaves, *features)


def weights_digest(net: torch.nn.Module) -> str:
    """SHA-256 (hex) of the network's structure, volseg's version and every state tensor's bytes."""
    from volseg import __version__

    h = hashlib.sha256(f"{__version__}\n{net!r}\n".encode())
    for name, t in sorted(net.state_dict().items()):
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def export_onnx(net: torch.nn.Module, input_shape: Sequence[int], path: str | os.PathLike,
                features: bool = True, output_names: Sequence[str] | None = None,
                dynamic_batch: bool = False, finish=None) -> Path:
    """Write ``net`` (eval mode, CPU) as an ONNX graph for float32 inputs ``image`` of
    ``input_shape`` (B, C, z, y, x), atomically; see the module docstring for the outputs.

    Args:
        features: Also output the pooled bottleneck features.
        output_names: Names of the outputs (default ``output_0``, ...).
        dynamic_batch: Let the batch dimension of the input and every output vary.
        finish: Called with the written temporary path before it is renamed into place
            (e.g. to add metadata).
    """
    graph = ExportGraph(net, features).eval()
    example = torch.zeros(tuple(int(s) for s in input_shape))
    with torch.no_grad():
        n_out = len(graph(example))
    names = list(output_names) if output_names is not None else [f"output_{i}" for i in range(n_out)]
    dynamic = {n: {0: "batch"} for n in ["image", *names]} if dynamic_batch else None
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(graph, (example,), str(tmp), dynamo=False, opset_version=OPSET, input_names=["image"],
                          output_names=names, dynamic_axes=dynamic, do_constant_folding=True)
        if finish is not None:
            finish(tmp)
    return Path(path)


_scratch: list[Path] = []


def _scratch_dir() -> Path:
    """A temporary folder for exports of a read-only model folder, removed at exit."""
    if not _scratch:
        _scratch.append(Path(tempfile.mkdtemp(prefix="volseg-export-")))
        atexit.register(shutil.rmtree, _scratch[0], True)
    return _scratch[0]


def cached_onnx(net: torch.nn.Module, input_shape: Sequence[int], fold_folder: str | os.PathLike) -> Path:
    """The ONNX export of ``net`` for ``input_shape``, from ``fold_folder/export/`` when its
    weights digest matches, else exported there (exports of other weights are removed).

    A model folder that cannot be written gets the export in a temporary folder instead.
    """
    digest = weights_digest(net)[:16]
    name = f"{_PREFIX}{'x'.join(str(int(s)) for s in input_shape)}-{digest}.onnx"
    folder = Path(fold_folder) / EXPORT_DIR
    path = folder / name
    if path.is_file():
        return path
    try:
        export_onnx(net, input_shape, path)
    except OSError as e:
        log.info("%s cannot be written (%s): the network is exported to a temporary folder", folder, e.strerror or e)
        return export_onnx(net, input_shape, _scratch_dir() / f"{Path(fold_folder).name}-{name}")
    for old in folder.glob(f"{_PREFIX}*.onnx"):
        if not old.name.endswith(f"-{digest}.onnx"):
            old.unlink(missing_ok=True)
    return path
