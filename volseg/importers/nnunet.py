"""``volseg import-nnunet``: a trained nnU-Net v2 trainer folder → a volseg model folder.

:func:`map_nnunet_model` reads and maps everything (plan, network, weights of every fold)
without writing; :func:`import_nnunet` then writes the model folder with volseg's own
helpers, checks that :func:`volseg.model.load_model` accepts it, and moves it into place.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from volseg.errors import ModelError, PlanError
from volseg.importers.nnunet_architecture import ArchitectureError, map_architecture
from volseg.importers.nnunet_axes import check_permutation, inverse, untranspose, untranspose_axes
from volseg.importers.nnunet_checkpoint import NnunetCheckpoint, file_sha256, read_nnunet_checkpoint
from volseg.importers.nnunet_plans import (build_plans, channel_names, check_plan_kind, default_configuration,
                                           file_ending, map_labels, map_normalization, resolve_configuration)
from volseg.importers.nnunet_results import ResultsFolder, find_results
from volseg.importers.nnunet_weights import convert_state_dict

SOURCE_FORMAT = "nnU-Net v2"
COPIES = "nnunet"  # MODEL/nnunet/: the source plans.json, dataset.json, dataset_fingerprint.json


@dataclass
class MappedModel:
    """An nnU-Net trainer folder, mapped and checked, not yet written.

    Attributes:
        results: The source files.
        plans: The volseg plan (validated).
        config_name: Its one configuration.
        states: Fold name → volseg state dict of the fold's network.
        record: The ``imported_from`` record of ``model.json``.
    """

    results: ResultsFolder
    plans: dict
    config_name: str
    states: dict[str, dict[str, torch.Tensor]]
    record: dict = field(default_factory=dict)


def _load_json(path: Path) -> dict:
    from volseg.io.dataset import load_dataset_json

    return load_dataset_json(path)


def _configuration_name(results: ResultsFolder, requested: str | None, first: NnunetCheckpoint) -> str:
    name = requested or default_configuration(results.root) or first.configuration
    if name is None:
        raise ModelError(results.root, "cannot tell the configuration (the folder is not named "
                         "TRAINER__PLANS__CONFIGURATION and the checkpoint does not say); give --configuration")
    return name


def _check_folds(checkpoints: dict[str, NnunetCheckpoint], name: str) -> tuple[int, ...] | None:
    """The folds' common mirroring axes; every fold must come from one trainer and configuration."""
    first = next(iter(checkpoints.values()))
    for ck in checkpoints.values():
        if ck.configuration is not None and ck.configuration != name:
            raise ModelError(ck.path, f"was trained with configuration {ck.configuration!r}, not {name!r}")
        if ck.trainer_name != first.trainer_name:
            raise ModelError(ck.path, f"was trained by {ck.trainer_name}, fold of {first.path.parent.name} by "
                             f"{first.trainer_name}; import the folds separately")
        if ck.mirror_axes != first.mirror_axes:
            raise ModelError(ck.path, f"allows mirroring axes {ck.mirror_axes}, {first.path.parent.name} "
                             f"{first.mirror_axes}; import the folds separately")
    return first.mirror_axes


def map_nnunet_model(results_dir: str | os.PathLike, folds: Sequence[str | int] | None = None,
                     checkpoint: str = "final", configuration: str | None = None) -> MappedModel:
    """Read and map a trainer folder: the volseg plan and every fold's weights.

    Args:
        results_dir: ``.../DatasetXXX_Name/TRAINER__PLANS__CONFIGURATION``.
        folds: Fold names to import (default: every fold holding the checkpoint).
        checkpoint: ``"final"`` (``checkpoint_final.pth``) or ``"best"``.
        configuration: The nnU-Net configuration (default: from the folder name, else the checkpoint).

    Raises:
        ModelError, PlanError, DatasetError: One line naming the file, for anything missing,
            unreadable, refused as a pickle, or not representable in volseg.
    """
    from volseg.networks.factory import from_plans
    from volseg.planning.plans import validate_plans

    results = find_results(results_dir, folds, checkpoint)
    nn_plans, dataset = _load_json(results.plans), _load_json(results.dataset)
    checkpoints = {fold: read_nnunet_checkpoint(path) for fold, path in results.checkpoints.items()}
    first = next(iter(checkpoints.values()))
    name = _configuration_name(results, configuration, first)
    nn_mirror = _check_folds(checkpoints, name)
    config = resolve_configuration(nn_plans, name, results.plans)
    check_plan_kind(nn_plans, config, name, results.plans)
    try:
        forward = check_permutation(nn_plans.get("transpose_forward", [0, 1, 2]), "transpose_forward")
        backward = check_permutation(nn_plans.get("transpose_backward", list(inverse(forward))), "transpose_backward")
        if backward != inverse(forward):
            raise ValueError(f"transpose_backward {list(backward)} is not the inverse of transpose_forward "
                             f"{list(forward)}")
        arch = map_architecture(config, forward, first.trainer_name)
    except (ValueError, ArchitectureError) as e:
        raise PlanError(results.plans, f"configuration {name!r}: {e}") from None
    channels = channel_names(dataset, results.dataset)
    labels, outputs = map_labels(dataset, results.dataset)
    normalization = map_normalization(nn_plans, config, len(channels), name, results.plans)
    mirror = untranspose_axes(nn_mirror or (), forward)
    median = config.get("median_image_size_in_voxels")
    plans = build_plans(dataset_name=str(nn_plans.get("dataset_name", results.root.parent.name)),
                        channel_names=channels, labels=labels, outputs=outputs, normalization=normalization,
                        config_name=name, spacing=untranspose(config["spacing"], forward),
                        patch_size=untranspose(config["patch_size"], forward), batch_size=int(config["batch_size"]),
                        median_shape=untranspose(median, forward) if isinstance(median, list) and len(median) == 3
                        else None, network=arch.network, mirror_axes=mirror, batch_dice=config.get("batch_dice"),
                        file_ending=file_ending(dataset))
    validate_plans(plans, results.plans)
    network = from_plans(arch.network, len(channels), outputs["num_outputs"])
    states = {}
    for fold, ck in checkpoints.items():
        state = convert_state_dict(ck.weights, network, residual=arch.class_name == "ResidualEncoderUNet",
                                   conv_bias=arch.conv_bias, norm_affine=arch.norm_affine, forward=forward,
                                   path=ck.path)
        network.load_state_dict(state, strict=True)  # the names and shapes volseg will load
        states[fold] = state
    notes = list(arch.notes)
    if config.get("resampling_fn_data_kwargs", {}).get("order", 3) != 1:
        notes.append("cases not at the configuration's spacing are resampled linearly, where nnU-Net uses "
                     f"order-{config.get('resampling_fn_data_kwargs', {}).get('order', 3)} splines")
    if dataset.get("file_ending", ".nii.gz") != file_ending(dataset):
        notes.append(f"the dataset's {dataset['file_ending']} files: volseg predicts NIfTI files")
    record = {"format": SOURCE_FORMAT, "source": str(results.root.resolve()), "trainer": first.trainer_name,
              "plans_name": nn_plans.get("plans_name"), "dataset_name": nn_plans.get("dataset_name"),
              "configuration": name, "network_class": arch.class_name, "checkpoint": first.path.name,
              "transpose_forward": list(forward), "mirror_axes": None if nn_mirror is None else list(nn_mirror),
              "folds": {f: {"file": f"fold_{f}/{ck.path.name}", "sha256": ck.sha256, "epoch": ck.epoch}
                        for f, ck in checkpoints.items()},
              "files": {p.name: file_sha256(p) for p in (results.plans, results.dataset, results.fingerprint)
                        if p is not None},
              "notes": notes}
    return MappedModel(results=results, plans=plans, config_name=name, states=states, record=record)


def _check_output(out: Path, results: ResultsFolder) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ModelError(out, "exists and is not an empty folder; choose a new output folder (-o)")
    src = results.root.resolve()
    if out.resolve() == src or src in out.resolve().parents:
        raise ModelError(out, f"lies inside the nnU-Net results folder {results.root}; choose another output folder (-o)")


def write_model_folder(mapped: MappedModel, out: str | os.PathLike,
                       finish: Callable[[Path], object] | None = None) -> Path:
    """Write ``mapped`` as a volseg model folder at ``out`` (new, or an empty folder).

    The folder is assembled beside ``out``, loaded once with :func:`volseg.model.load_model`,
    given to ``finish`` (e.g. to fit the shift check's reference into it), then renamed onto
    ``out``: a failure, ``finish``'s included, leaves no partial model folder.

    Layout: ``model.json`` (with an ``imported_from`` record), ``plans.json``, ``dataset.json``
    (the source's), ``nnunet/`` (the source's plans, dataset and fingerprint files) and
    ``fold_K/checkpoint_final.pt`` per fold, whichever nnU-Net checkpoint it came from.

    Raises:
        ModelError: ``out`` is a file, a folder with files, or inside the source folder.
    """
    from volseg.io.atomic import write_json
    from volseg.model import fold_dir, load_model, prepare_model_folder, save_checkpoint

    out = Path(out)
    _check_output(out, mapped.results)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.import-", dir=out.parent))
    try:
        record = prepare_model_folder(tmp, tmp, mapped.plans, mapped.config_name)
        record = {**record, "imported_from": mapped.record}
        write_json(tmp / "model.json", record)
        shutil.copyfile(mapped.results.dataset, tmp / "dataset.json")
        (tmp / COPIES).mkdir()
        for src in (mapped.results.plans, mapped.results.dataset, mapped.results.fingerprint):
            if src is not None:
                shutil.copyfile(src, tmp / COPIES / src.name)
        for fold, state in mapped.states.items():
            save_checkpoint(fold_dir(tmp, fold) / "checkpoint_final.pt",
                            {"network": state, "plan_hash": record["plan_hash"], "configuration": mapped.config_name,
                             "fold": fold, "epoch": mapped.record["folds"][fold]["epoch"],
                             "imported_from": f"{SOURCE_FORMAT} {mapped.record['folds'][fold]['file']}"})
        load_model(tmp, list(mapped.states), "final", "cpu")
        if finish is not None:
            finish(tmp)
        if out.is_dir():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def import_nnunet(results_dir: str | os.PathLike, out: str | os.PathLike, folds: Sequence[str | int] | None = None,
                  checkpoint: str = "final", configuration: str | None = None) -> MappedModel:
    """Import a trained nnU-Net v2 trainer folder as a volseg model folder that ``volseg predict`` runs.

    Args:
        results_dir: ``.../DatasetXXX_Name/TRAINER__PLANS__CONFIGURATION``.
        out: The model folder to write (new or empty).
        folds, checkpoint, configuration: See :func:`map_nnunet_model`.

    Returns:
        The mapped model (plan, configuration, ``imported_from`` record).

    Raises:
        VolsegError: One line naming the file at fault; nothing is written then.
    """
    mapped = map_nnunet_model(results_dir, folds, checkpoint, configuration)
    write_model_folder(mapped, out)
    return mapped
