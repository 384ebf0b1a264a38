"""The training loop: a short function over parts built from the plan, the same for every task.

Parts (see :mod:`volseg.training.build`): the task (:mod:`volseg.tasks`), network,
optimizer, loss (named terms, summed here), training and validation loaders, and a
checkpointer/logger (:mod:`volseg.model.checkpoint`, :mod:`volseg.training.progress`). The
task's validation score drives the EMA and the best checkpoint. Only rank 0 writes files.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from volseg.errors import VolsegError
from volseg.model.checkpoint import load_checkpoint, save_checkpoint
from volseg.tasks import Task
from volseg.training.distributed import DistContext, all_reduce_sum
from volseg.training.progress import EpochLog, plot_progress
from volseg.training.schedule import learning_rate

log = logging.getLogger(__name__)
EMA_MOMENTUM = 0.9  # for plans written before training.score_ema_momentum
MAX_NONFINITE_STEPS = 3  # consecutive non-finite losses (steps skipped) before training stops


@dataclass
class TrainParts:
    """Everything the loop needs; built by :func:`volseg.training.build.build_parts`."""

    task: Task
    network: torch.nn.Module          # possibly DDP-wrapped
    optimizer: torch.optim.Optimizer
    loss: Callable[[Any, Any], dict[str, torch.Tensor]]  # named terms
    train_batches: Iterator[dict]
    val_batches: Iterator[dict] | None
    wait_time: Callable[[], float]    # seconds spent waiting for batches so far
    close: Callable[[], None] = lambda: None


@dataclass
class Schedule:
    epochs: int
    iterations_per_epoch: int
    val_iterations: int
    base_lr: float
    lr_schedule: dict
    grad_clip: float | None
    amp: bool = False
    time_limit: float | None = None   # seconds for the whole loop; fixes `epochs` after the first epoch
    score_ema_momentum: float = EMA_MOMENTUM  # the plan's training.score_ema_momentum
    best_checkpoint: str = "score_ema"         # the plan's training.best_checkpoint: "score_ema" or "score"


def epochs_within(time_limit: float, epoch_seconds: float, max_epochs: int) -> int:
    """Epochs that fit in ``time_limit`` seconds at ``epoch_seconds`` each: 1 ≤ n ≤ ``max_epochs``.

    Example:
        >>> epochs_within(600.0, 25.0, 50), epochs_within(600.0, 9.0, 50), epochs_within(10.0, 30.0, 50)
        (24, 50, 1)
    """
    return int(max(1, min(max_epochs, time_limit // max(epoch_seconds, 1e-9))))


@dataclass
class TrainState:
    epoch: int = 0
    score_ema: float | None = None
    best_score: float = -1.0
    history: list = field(default_factory=list)


def _raw(net: torch.nn.Module) -> torch.nn.Module:
    return net.module if hasattr(net, "module") else net


def _to(batch: dict, device: torch.device) -> tuple[torch.Tensor, Any]:
    data = batch["data"].to(device, non_blocking=True)
    tgt = batch["target"]
    if isinstance(tgt, dict):
        return data, _moved(tgt, device)
    tgt = [t.to(device, non_blocking=True) for t in tgt] if isinstance(tgt, (list, tuple)) else tgt.to(device)
    return data, tgt


def _moved(value, device: torch.device):
    """Tensors inside dicts and lists moved to ``device``."""
    if isinstance(value, dict):
        return {k: _moved(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_moved(v, device) for v in value]
    return value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value


def total_loss(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of the named loss terms (a single term is returned as it is)."""
    values = list(terms.values())
    total = values[0]
    for v in values[1:]:
        total = total + v
    return total


class TrainingDiverged(VolsegError):
    """The loss stayed non-finite (NaN or Inf) for :data:`MAX_NONFINITE_STEPS` iterations in a row."""


def _finite_everywhere(loss: torch.Tensor, ctx: DistContext) -> bool:
    """Whether the loss is finite on every rank (the same answer on all of them)."""
    bad = torch.tensor([0.0 if bool(torch.isfinite(loss.detach())) else 1.0], dtype=torch.float64)
    if ctx.distributed:
        bad = all_reduce_sum(bad.to(ctx.device), ctx).cpu()
    return float(bad[0]) == 0.0


def train_epoch(parts: TrainParts, sched: Schedule, state: TrainState, ctx: DistContext,
                scaler: torch.amp.GradScaler | None, bar=None) -> tuple[float, float, dict[str, float]]:
    """One epoch of optimization. Returns (mean loss, seconds waited for data, mean of each loss term)."""
    parts.network.train()
    total_steps = sched.epochs * sched.iterations_per_epoch
    wait0, losses, term_sums, nonfinite = parts.wait_time(), [], {}, 0
    device_type = ctx.device.type
    for it in range(sched.iterations_per_epoch):
        lr = learning_rate(sched.lr_schedule, sched.base_lr, state.epoch * sched.iterations_per_epoch + it, total_steps)
        for group in parts.optimizer.param_groups:
            group["lr"] = lr
        data, target = _to(next(parts.train_batches), ctx.device)
        parts.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type, enabled=sched.amp and device_type == "cuda"):
            terms = parts.loss(parts.network(data), target)
            loss = total_loss(terms)
        if not _finite_everywhere(loss, ctx):  # skip the step on every rank; stop when it persists
            nonfinite += 1
            if nonfinite >= MAX_NONFINITE_STEPS:
                raise TrainingDiverged(None, f"training diverged: {nonfinite} consecutive non-finite losses "
                                       f"(epoch {state.epoch}, iteration {it}); checkpoint_latest.pt keeps the "
                                       f"last complete epoch. Lower training.optimizer.lr in plans.json and train "
                                       f"again")
            continue
        nonfinite = 0
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(parts.optimizer)
        else:
            loss.backward()
        if sched.grad_clip:
            torch.nn.utils.clip_grad_norm_(parts.network.parameters(), sched.grad_clip)
        if scaler is not None:
            scaler.step(parts.optimizer)
            scaler.update()
        else:
            parts.optimizer.step()
        losses.append(float(loss.detach()))
        for name, value in terms.items():
            term_sums[name] = term_sums.get(name, 0.0) + float(value.detach())
        if bar is not None:
            bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr:.2e}")
            bar.update()
    n = max(len(losses), 1)
    return float(sum(losses) / n), parts.wait_time() - wait0, {k: v / n for k, v in term_sums.items()}


@torch.no_grad()
def validate(parts: TrainParts, sched: Schedule, ctx: DistContext) -> tuple[float, float, dict]:
    """Loss, task score and the score's extra log fields on ``val_iterations`` validation
    patches (statistics summed over ranks); (NaN, NaN, {}) without validation."""
    if parts.val_batches is None or sched.val_iterations == 0:
        return float("nan"), float("nan"), {}
    parts.network.eval()
    loss_sum, stats = torch.zeros(2, dtype=torch.float64), None
    for _ in range(sched.val_iterations):
        data, target = _to(next(parts.val_batches), ctx.device)
        with torch.autocast(ctx.device.type, enabled=sched.amp and ctx.device.type == "cuda"):
            out = parts.network(data)
            loss = total_loss(parts.loss(out, target))
        s = parts.task.batch_stats(out, target)
        stats = s if stats is None else stats + s
        loss_sum += torch.tensor([float(loss), 1.0], dtype=torch.float64)
    if ctx.distributed:  # NCCL reduces CUDA tensors only; gloo takes CPU tensors
        stats = all_reduce_sum(stats.to(ctx.device), ctx).cpu()
        loss_sum = all_reduce_sum(loss_sum.to(ctx.device), ctx).cpu()
    score, extra = parts.task.score(stats)
    return float(loss_sum[0] / loss_sum[1]), score, extra


def rng_states() -> dict:
    """Every random state of the training process, as tensors and plain values (``weights_only`` safe).

    torch's CPU (and CUDA, when present) generators, NumPy's global ``RandomState`` and Python's
    ``random``. The data loader's streams are not among them: they are keyed by batch index
    (:meth:`volseg.data.loader.BatchLoader.seek`).
    """
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    out = {"torch": torch.get_rng_state(),
           "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                     "cached_gaussian": float(gauss)},
           "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next}}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_states(states: dict) -> None:
    """Restore what :func:`rng_states` returned (CUDA states only where CUDA is present)."""
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])
    n = states["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    py = states["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))


def checkpoint_state(parts: TrainParts, state: TrainState, plan_hash: str, config_name: str, fold: str,
                     sched_epochs: int) -> dict:
    return {"network": _raw(parts.network).state_dict(), "optimizer": parts.optimizer.state_dict(),
            "epoch": state.epoch, "score_ema": state.score_ema, "best_score": state.best_score,
            "plan_hash": plan_hash, "configuration": config_name, "fold": fold,
            "rng": rng_states(), "epochs": sched_epochs}


def _seek(batches: Iterator[dict] | None, index: int) -> None:
    if batches is not None and hasattr(batches, "seek"):
        batches.seek(index)


def resume(parts: TrainParts, path: Path, plan_hash: str, state: TrainState, sched: Schedule) -> None:
    """Load network, optimizer, counters and random states from ``path`` into ``parts`` and ``state``.

    The loaders continue at the first batch of ``state.epoch``, so that a run killed and resumed
    gives the weights of the uninterrupted run, bit for bit (on the CPU). A schedule whose
    length a time limit fixed keeps that length (``sched.epochs``).
    """
    ck = load_checkpoint(path, plan_hash)
    if sched.time_limit is not None and "epochs" in ck:
        sched.epochs = int(ck["epochs"])
    _raw(parts.network).load_state_dict(ck["network"])
    parts.optimizer.load_state_dict(ck["optimizer"])
    state.epoch = int(ck["epoch"])
    state.score_ema = ck.get("score_ema", ck.get("ema_dice"))  # older checkpoints: ema_dice / best_ema
    state.best_score = float(ck.get("best_score", ck.get("best_ema", -1.0)))
    if "rng" in ck:
        set_rng_states(ck["rng"])
    else:  # checkpoints written before the full random state was kept
        torch.set_rng_state(ck["torch_rng"])
    _seek(parts.train_batches, state.epoch * sched.iterations_per_epoch)
    _seek(parts.val_batches, state.epoch * sched.val_iterations)


def fit_epochs(sched: Schedule, epoch_seconds: float, ctx: DistContext, bar=None) -> None:
    """Lower ``sched.epochs`` so that the loop fits in ``sched.time_limit`` (same on every rank)."""
    seconds = torch.tensor([epoch_seconds], dtype=torch.float64)
    if ctx.distributed:
        seconds = all_reduce_sum(seconds.to(ctx.device), ctx).cpu() / ctx.world_size
    planned = sched.epochs
    sched.epochs = epochs_within(sched.time_limit, float(seconds[0]), planned)
    msg = (f"time limit {sched.time_limit / 60:.1f} min at {float(seconds[0]):.1f} s per epoch: "
           f"{sched.epochs} of {planned} epochs")
    log.info(msg)
    if bar is not None:
        bar.total = (sched.epochs - 1) * sched.iterations_per_epoch + bar.n
        bar.refresh()
        if ctx.is_main:
            bar.write(msg)


def run_training(parts: TrainParts, sched: Schedule, ctx: DistContext, out_dir: Path, plan_hash: str,
                 config_name: str, fold: str, state: TrainState | None = None, progress: bool = True) -> TrainState:
    """Train from ``state.epoch`` to ``sched.epochs``, writing checkpoints and logs to ``out_dir`` (rank 0).

    After every epoch: ``checkpoint_latest.pt`` (atomic), a ``log.jsonl`` record and
    ``progress.png``; ``checkpoint_best.pt`` when the smoothed task score (pseudo-Dice for
    segmentation) improves;
    ``checkpoint_final.pt`` at the end.

    With ``sched.time_limit``, the first epoch is timed (mean over ranks) and ``sched.epochs``
    lowered to what fits (:func:`epochs_within`); the poly schedule then runs to that length.
    The choice is stored in the checkpoints, so a resumed run keeps it.
    """
    from tqdm import tqdm

    state = state or TrainState()
    epoch_log = EpochLog(out_dir / "log.jsonl")
    if ctx.is_main:
        epoch_log.truncate(state.epoch)
    scaler = torch.amp.GradScaler("cuda") if sched.amp and ctx.device.type == "cuda" else None
    total = (sched.epochs - state.epoch) * sched.iterations_per_epoch
    bar = tqdm(total=total, desc=f"train fold {fold}", unit="it", disable=not (progress and ctx.is_main), leave=False)
    try:
        while state.epoch < sched.epochs:
            t0 = time.perf_counter()
            train_loss, waited, terms = train_epoch(parts, sched, state, ctx, scaler, bar)
            train_seconds = time.perf_counter() - t0
            val_loss, score, extra = validate(parts, sched, ctx)
            m = sched.score_ema_momentum
            if not math.isnan(score):
                state.score_ema = score if state.score_ema is None else m * state.score_ema + (1 - m) * score
            seconds = time.perf_counter() - t0
            record = {"epoch": state.epoch, "train_loss": train_loss, "loss_terms": terms, "val_loss": val_loss,
                      "score": score, "score_ema": state.score_ema, **extra,
                      "lr": parts.optimizer.param_groups[0]["lr"], "epoch_seconds": seconds, "train_seconds": train_seconds,
                      "data_wait_seconds": waited, "data_wait_share": waited / max(train_seconds, 1e-9)}
            state.epoch += 1
            if sched.time_limit is not None and state.epoch == 1:
                fit_epochs(sched, seconds, ctx, bar)
            chosen = state.score_ema if sched.best_checkpoint == "score_ema" else (None if math.isnan(score) else score)
            improved = chosen is not None and chosen > state.best_score
            if improved:
                state.best_score = chosen
            if ctx.is_main:
                ck = checkpoint_state(parts, state, plan_hash, config_name, fold, sched.epochs)
                save_checkpoint(out_dir / "checkpoint_latest.pt", ck)
                if improved:
                    save_checkpoint(out_dir / "checkpoint_best.pt", ck)
                epoch_log.append(record)
                plot_progress(epoch_log.records(), out_dir / "progress.png")
                log.debug("epoch %d: %s", record["epoch"], record)
                bar.write(f"epoch {record['epoch']:>4}  loss {train_loss:.4f}  val {val_loss:.4f}  "
                          f"{parts.task.score_name} {score:.3f}  {seconds:.1f}s  data wait {100 * record['data_wait_share']:.1f}%")
            state.history.append(record)
        if ctx.is_main:
            save_checkpoint(out_dir / "checkpoint_final.pt",
                            checkpoint_state(parts, state, plan_hash, config_name, fold, sched.epochs))
    finally:
        bar.close()
    return state
