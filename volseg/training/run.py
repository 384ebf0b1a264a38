"""Training one fold as a library call: a plan folder and a fold in, a model folder out.

The held-out validation that follows training (predict, score, calibrate) is the
cross-validation workflow's (:mod:`volseg.workflow`), which ``volseg train`` runs.
"""

from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from volseg.errors import ModelError, PlanError
from volseg.io.atomic import remove_stale_temps, write_json
from volseg.planning.plans import configuration, load_plans, preprocessing_hash
from volseg.model import fold_dir, load_checkpoint, model_hash, prepare_model_folder
from volseg.training.distributed import check_same_on_every_rank, digest, init_distributed, shutdown
from volseg.training.splits import fold_cases, load_or_create_splits, make_splits
from volseg.training.trainer import EMA_MOMENTUM, Schedule, TrainState, resume, run_training

log = logging.getLogger(__name__)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def inputs_digests(plan_dir: Path, plans: dict, config_name: str, train_ids: list[str],
                   val_ids: list[str]) -> dict[str, str]:
    """What every rank of a distributed run must agree on: the plan's configuration, the
    preprocessed files (names and sizes) and the fold's cases."""
    folder = plan_dir / "preprocessed" / config_name
    files = sorted((p.name, p.stat().st_size) for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    return {"plan": digest(json.dumps(plans, sort_keys=True)), "preprocessed data": digest(files),
            "fold split": digest(sorted(train_ids), sorted(val_ids))}


def fold_split(splits_path: Path, case_ids: list[str], fold: str) -> tuple[list[str], list[str], list[dict] | None]:
    """Training and validation ids of ``fold``, and the splits to write when ``splits_path`` is new.

    Without a ``splits.json``, the splits are made from ``case_ids`` (the same on every rank);
    a single case has none, and trains only as ``fold="all"``.

    Raises:
        ModelError: The fold does not exist (nothing has been written yet).
    """
    if splits_path.is_file():
        return (*fold_cases(load_or_create_splits(splits_path, case_ids), fold, splits_path), None)
    if len(case_ids) < 2:
        if fold != "all":
            raise ModelError(splits_path.parent, f"{len(case_ids)} preprocessed case: cross-validation needs "
                             f"at least 2; train on it with --fold all")
        return list(case_ids), [], None
    splits = make_splits(case_ids)
    return (*fold_cases(splits, fold, splits_path), splits)


def preprocessed_cases(plan_dir: Path, plans: dict, config_name: str) -> list[str]:
    """Ids of the cases preprocessed for ``config_name`` with the current plan.

    Raises:
        PlanError: The folder is missing or was made with another plan.
    """
    folder = plan_dir / "preprocessed" / config_name
    props = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not props:
        raise PlanError(folder, f"no preprocessed cases; run: volseg plan DATASET -o {plan_dir} -c {config_name}")
    import json

    want = preprocessing_hash(plans, config_name)
    stale = [p.stem for p in props if json.loads(p.read_text()).get("source", {}).get("plan_hash") != want]
    if stale:
        raise PlanError(folder, f"{len(stale)} cases (e.g. {stale[0]}) were preprocessed with another plan; "
                        f"run volseg plan DATASET -o {plan_dir} -c {config_name} again")
    return [p.stem for p in props]


@dataclass(frozen=True)
class TrainedFold:
    """What :func:`train` produced: the model folder, the fold's folder inside it, its held-out
    case ids, whether this process is the main rank, and the device type trained on."""

    model_dir: Path
    fold_dir: Path
    fold: str
    val_ids: list[str]
    is_main: bool
    device: str


def train(plan_dir: str | os.PathLike, model_dir: str | os.PathLike | None = None, fold: int | str = 0,
          config_name: str | None = None, epochs: int | None = None, iterations: int | None = None,
          resume_training: bool = False, device: str = "auto", num_workers: int | None = None,
          seed: int = 0, deterministic: bool | None = None, progress: bool = True,
          time_limit_minutes: float | None = None) -> TrainedFold:
    """Train one fold of a configuration (no held-out validation: see :func:`volseg.workflow.train_fold`).

    Args:
        plan_dir: Folder written by ``volseg plan`` (plans.json, preprocessed/).
        model_dir: Model folder (default: ``plan_dir/models/<configuration>``).
        fold: 0..4, or "all" (train on every case, no validation).
        config_name: Configuration (default: the plan's default configuration).
        epochs, iterations: Override the plan's epochs and iterations per epoch.
        resume_training: Continue from ``checkpoint_latest.pt`` of this fold.
        device: "cuda", "cpu" or "auto".
        num_workers: Background augmentation processes (default: the plan's).
        seed: Seed of weights, sampling and augmentation.
        deterministic: Deterministic algorithms (default: the plan's ``training.deterministic``).
        time_limit_minutes: Budget of the training loop: after the first epoch, the number
            of epochs is lowered to what fits (never raised above ``epochs``). The final
            validation is not counted.

    Returns:
        A :class:`TrainedFold`.

    Example:
        >>> train("runs/ms_demo", fold=0, epochs=5).fold_dir  # doctest: +SKIP
    """
    from volseg.training.build import build_parts

    for name, value in (("epochs", epochs), ("iterations", iterations)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if time_limit_minutes is not None and not float(time_limit_minutes) > 0:
        raise ValueError(f"time limit must be positive, got {time_limit_minutes} minutes")
    plan_dir = Path(plan_dir)
    plans = load_plans(plan_dir / "plans.json")
    config_name, config = configuration(plans, config_name, plan_dir / "plans.json")
    ctx = init_distributed(device)
    try:  # every rank leaves the process group, also when it stops with an error
        tcfg = config["training"]
        if deterministic is None:  # the plan's; plans written before the key: on the CPU
            deterministic = tcfg.get("deterministic", ctx.device.type == "cpu")
        seed_everything(seed, deterministic)
        case_ids = preprocessed_cases(plan_dir, plans, config_name)
        model_dir = Path(model_dir) if model_dir else plan_dir / "models" / config_name
        fold = str(fold)
        train_ids, val_ids, new_splits = fold_split(model_dir / "splits.json", case_ids, fold)
        if ctx.distributed:  # one process has nothing to compare: no folder listing, no plan digest
            check_same_on_every_rank(ctx, inputs_digests(plan_dir, plans, config_name, train_ids, val_ids), plan_dir)
        if ctx.is_main:  # the fold is known to exist before anything is written
            remove_stale_temps(model_dir, recursive=True)
            prepare_model_folder(model_dir, plan_dir, plans, config_name)
            if new_splits is not None:
                write_json(model_dir / "splits.json", new_splits)
        ctx.barrier()
        out = fold_dir(model_dir, fold)
        out.mkdir(parents=True, exist_ok=True)
        sched = Schedule(epochs=epochs if epochs is not None else tcfg["epochs"],
                         iterations_per_epoch=iterations if iterations is not None else tcfg["iterations_per_epoch"],
                         val_iterations=tcfg["val_iterations"] if val_ids else 0,
                         base_lr=tcfg["optimizer"]["lr"], lr_schedule=tcfg["lr_schedule"], grad_clip=tcfg["grad_clip"],
                         amp=ctx.device.type == "cuda" and tcfg.get("amp", True),
                         score_ema_momentum=tcfg.get("score_ema_momentum", EMA_MOMENTUM),
                         best_checkpoint=tcfg.get("best_checkpoint", "score_ema"),
                         time_limit=None if time_limit_minutes is None else 60.0 * float(time_limit_minutes))
        state = TrainState()
        plan_hash = model_hash(plans, config_name)
        latest = out / "checkpoint_latest.pt"
        workers = tcfg["num_workers"] if num_workers is None else num_workers
        if not resume_training and latest.is_file():
            raise ModelError(latest, "fold already has a checkpoint; pass --resume to continue it, or use another -o")
        if resume_training and latest.is_file():
            load_checkpoint(latest, plan_hash)  # a damaged or foreign checkpoint fails before the loaders start
        parts = build_parts(plans, config, plan_dir / "preprocessed" / config_name, train_ids, val_ids, ctx,
                            num_workers=workers, seed=seed)
        try:
            if resume_training and latest.is_file():
                resume(parts, latest, plan_hash, state, sched)
                log.info("resuming fold %s at epoch %d", fold, state.epoch)
            elif resume_training:
                log.info("no checkpoint to resume in %s; starting fresh", out)
            run_training(parts, sched, ctx, out, plan_hash, config_name, fold, state, progress)
        finally:
            parts.close()
        return TrainedFold(model_dir, out, fold, list(val_ids), ctx.is_main, ctx.device.type)
    finally:
        shutdown(ctx)
