"""``volseg export``: a model folder's networks as ONNX files that run without volseg.

One file per fold, ``OUT/<configuration>_fold_<K>.onnx``. Input ``image``: float32
(N, C, Z, Y, X), N free, (Z, Y, X) the plan's patch, axes as ``SimpleITK.GetArrayFromImage``
returns them (x fastest), already preprocessed (cropped, resampled to ``spacing_mm`` and
normalized as ``normalization`` says). Outputs: ``logits`` (N, K, Z, Y, X) for a dense model;
a Retina U-Net's outputs are named by their place in its output (``seg_0``, ``cls_0``,
``box_0``, ...). Everything needed to prepare the input and read the output is in the
file's metadata (``metadata_props``, each value a JSON text):
``volseg_format``, ``task``, ``configuration``, ``fold``, ``timepoints`` (which channels are the
baseline and the follow-up, for a change model), ``input_shape``, ``axes``, ``channel_names``,
``spacing_mm``, ``normalization``, ``crop_to_nonzero``, ``labels``, ``outputs``, ``inference``,
``output_names``, ``weights_sha256``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch.utils._pytree import tree_flatten_with_path

from volseg.errors import ModelError

FORMAT = "volseg-onnx/1"
AXES = "N, C, Z, Y, X; (Z, Y, X) as SimpleITK.GetArrayFromImage returns a NIfTI image, x fastest"


def output_names(net: torch.nn.Module, input_shape) -> list[str]:
    """Names of ``net``'s flattened outputs: ``logits`` for one tensor, else their key paths."""
    with torch.no_grad():
        leaves = tree_flatten_with_path(net(torch.zeros(tuple(input_shape))))[0]
    if len(leaves) == 1:
        return ["logits"]
    return ["_".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path) for path, _ in leaves]


def metadata(model, fold: str, names: list[str], digest: str) -> dict:
    """The metadata of fold ``fold``'s export of a loaded model (see the module docstring)."""
    plans, cfg = model.plans, model.config
    return {"volseg_format": FORMAT, "task": plans.get("task", "segmentation"), "configuration": model.config_name,
            "fold": fold, "timepoints": plans["dataset"].get("timepoints"),
            "input_shape": ["N", model.num_channels, *cfg["patch_size"]], "axes": AXES,
            "channel_names": plans["dataset"]["channel_names"], "spacing_mm": cfg["spacing"],
            "normalization": plans["normalization"], "crop_to_nonzero": plans.get("crop_to_nonzero", True),
            "labels": plans["dataset"]["labels"], "outputs": plans["outputs"], "inference": cfg["inference"],
            "output_names": names, "weights_sha256": digest}


def _add_metadata(meta: dict):
    def finish(path: Path) -> None:
        import onnx

        graph = onnx.load(str(path))
        graph.producer_name = "volseg"
        for key, value in meta.items():
            entry = graph.metadata_props.add()
            entry.key, entry.value = key, json.dumps(value)
        onnx.save(graph, str(path))
    return finish


def export_model(model_dir: str | os.PathLike, out_dir: str | os.PathLike, folds: list[str] | None = None,
                 checkpoint: str = "final") -> list[Path]:
    """Write every fold of ``model_dir`` (or ``folds``) as ``OUT/<configuration>_fold_<K>.onnx``.

    Raises:
        ModelError: Not a model folder, or the ``onnx`` package is missing.
    """
    from volseg.io.atomic import check_output_dir
    from volseg.model import load_model
    from volseg.runtime.export import export_onnx, weights_digest

    try:
        import onnx  # noqa: F401
    except ModuleNotFoundError:
        raise ModelError(model_dir, "exporting needs the onnx package: pip install 'volseg[cpu-fast]'") from None
    out = check_output_dir(out_dir, [model_dir])
    model = load_model(model_dir, folds, checkpoint, "cpu")
    shape = (1, model.num_channels, *model.config["patch_size"])
    written = []
    for fold, net in zip(model.folds, model.networks):
        names = output_names(net, shape)
        meta = metadata(model, fold, names, weights_digest(net))
        path = out / f"{model.config_name}_fold_{fold}.onnx"
        written.append(export_onnx(net, shape, path, features=False, output_names=names, dynamic_batch=True,
                                   finish=_add_metadata(meta)))
    return written
