"""Loading a trained model folder for prediction: plan, task, configuration, fold networks, calibration."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from volseg.errors import ModelError
from volseg.planning.plans import load_plans
from volseg.model.checkpoint import load_checkpoint
from volseg.model.folder import fold_dir, load_model_record, model_hash
from volseg.tasks import Task, make_task


@dataclass
class LoadedModel:
    """A model folder ready to predict."""

    root: Path
    plans: dict
    config_name: str
    config: dict
    networks: list[torch.nn.Module]
    folds: list[str]
    task: Task
    calibration: dict = field(default_factory=dict)  # calibrator name → parameters (MODEL/<name>.json)

    @property
    def num_channels(self) -> int:
        return len(self.plans["dataset"]["channel_names"])


def available_folds(model_dir: str | os.PathLike, checkpoint: str = "final") -> list[str]:
    """Folds of ``model_dir`` that hold ``checkpoint_<checkpoint>.pt``."""
    root = Path(model_dir)
    return sorted(p.parent.name[len("fold_"):] for p in root.glob(f"fold_*/checkpoint_{checkpoint}.pt"))


def load_model(model_dir: str | os.PathLike, folds: list[str] | None = None, checkpoint: str = "final",
               device: torch.device | str = "cpu") -> LoadedModel:
    """Load the networks of ``folds`` (default: every trained fold) from a model folder.

    Args:
        model_dir: Folder written by ``volseg train``.
        folds: Fold names ("0", "1", ..., "all"); default all folds with the checkpoint.
        checkpoint: "final", "best" or "latest".
        device: Where the networks go.

    Raises:
        ModelError: Not a model folder, no trained fold, or a checkpoint from another plan.
    """
    from volseg.io.dataset import load_dataset_json

    root = Path(model_dir)
    record = load_model_record(root)
    plans = load_plans(root / "plans.json")
    name = record["configuration"]
    if name not in plans["configurations"]:
        raise ModelError(root / "plans.json", f"configuration {name!r} of model.json is missing from the plan")
    config = plans["configurations"][name]
    expected = model_hash(plans, name)
    folds = [str(f) for f in folds] if folds else available_folds(root, checkpoint)
    if not folds:
        raise ModelError(root, f"no fold has checkpoint_{checkpoint}.pt; train a fold first (volseg train)")
    try:
        task = make_task(plans)
    except ValueError as e:
        raise ModelError(root / "plans.json", str(e)) from None
    task.prepare(config)
    networks = []
    for fold in folds:
        state = load_checkpoint(fold_dir(root, fold) / f"checkpoint_{checkpoint}.pt", plan_hash=expected)
        net = task.build_network(config)
        bad = next((k for k, v in state["network"].items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
        if bad is not None:
            raise ModelError(fold_dir(root, fold) / f"checkpoint_{checkpoint}.pt",
                             f"holds non-finite weights (NaN or Inf, e.g. {bad}): its training diverged; train again")
        net.load_state_dict(state["network"])
        if hasattr(net, "deep_supervision"):
            net.deep_supervision = False
        networks.append(net.to(device).eval())
    calibration = {c.name: load_dataset_json(root / f"{c.name}.json") for c in task.calibrators()
                   if (root / f"{c.name}.json").is_file()}
    return LoadedModel(root, plans, name, config, networks, folds, task, calibration)
