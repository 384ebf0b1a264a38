"""The model folder: everything needed to predict, and nothing pickled.

Layout::

    MODEL/
      model.json          configuration name, plan hash, input channels, outputs
      plans.json          copy of the plan (the only source of settings downstream)
      dataset.json        copy of the dataset's description
      fingerprint.json    copy of the fingerprint
      splits.json         the cross-validation folds
      <calibrator>.json   parameters fitted on held-out predictions (e.g. postprocessing.json)
      fold_K/
        checkpoint_latest.pt   written after every epoch (resume)
        checkpoint_best.pt     best smoothed validation score of the task (pseudo-Dice for segmentation)
        checkpoint_final.pt    after the last epoch
        log.jsonl              one record per epoch
        progress.png           curves of log.jsonl
        validation/            held-out cases predicted after training, with reference/ and evaluation/

Training writes it, inference reads it; neither imports the other.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from volseg.errors import ModelError
from volseg.io.atomic import atomic_path, write_json
from volseg.io.dataset import load_dataset_json


def model_hash(plans: dict, config_name: str) -> str:
    """Hash of every plan field that shapes the trained model of ``config_name``."""
    key = {"configuration": plans["configurations"][config_name], "outputs": plans["outputs"],
           "normalization": plans["normalization"], "channels": plans["dataset"]["channel_names"],
           "crop_to_nonzero": plans["crop_to_nonzero"]}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def fold_dir(model_dir: str | os.PathLike, fold: int | str) -> Path:
    return Path(model_dir) / f"fold_{fold}"


def prepare_model_folder(model_dir: str | os.PathLike, plan_dir: str | os.PathLike, plans: dict,
                         config_name: str) -> dict:
    """Create (or check) a model folder for ``config_name`` of ``plans``.

    Raises:
        ModelError: The folder already holds a model of another plan or configuration.

    Returns:
        The ``model.json`` record.
    """
    model_dir, plan_dir = Path(model_dir), Path(plan_dir)
    record = {"format": "volseg-model", "version": 1, "task": plans.get("task", "segmentation"),
              "configuration": config_name,
              "plan_hash": model_hash(plans, config_name),
              "in_channels": len(plans["dataset"]["channel_names"]), "outputs": plans["outputs"]}
    meta = model_dir / "model.json"
    if meta.is_file():
        old = load_dataset_json(meta)
        if old.get("plan_hash") != record["plan_hash"] or old.get("configuration") != config_name:
            raise ModelError(meta, f"this model folder holds configuration {old.get('configuration')!r} of another "
                             f"plan; use a new output folder (-o) or delete this one")
        return old
    model_dir.mkdir(parents=True, exist_ok=True)
    write_json(model_dir / "plans.json", plans)
    for name in ("fingerprint.json",):
        if (plan_dir / name).is_file():
            _copy(plan_dir / name, model_dir / name)
    fp = plan_dir / "fingerprint.json"
    if fp.is_file():
        root = Path(json.loads(fp.read_text())["dataset"]["root"])
        if (root / "dataset.json").is_file():
            _copy(root / "dataset.json", model_dir / "dataset.json")
    write_json(meta, record)
    return record


def load_model_record(model_dir: str | os.PathLike) -> dict:
    """Read ``model.json`` of a model folder."""
    meta = Path(model_dir) / "model.json"
    if not meta.is_file():
        raise ModelError(model_dir, "not a volseg model folder (model.json missing); train one with volseg train")
    return load_dataset_json(meta)


def _copy(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def dataset_root(model_dir: str | os.PathLike) -> Path | None:
    """The dataset folder the model was planned on (from the copied fingerprint), if it still exists."""
    fp = Path(model_dir) / "fingerprint.json"
    if not fp.is_file():
        return None
    root = Path(json.loads(fp.read_text())["dataset"]["root"])
    return root if (root / "imagesTr").is_dir() else None
