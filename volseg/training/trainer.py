"""The training loop: a short function over parts built from the plan.

Parts (see :mod:`volseg.training.build`): network, optimizer, loss, training and
validation loaders, and a checkpointer/logger (:mod:`volseg.training.checkpoint`,
:mod:`volseg.training.progress`). Only rank 0 writes files.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from volseg.training.checkpoint import load_checkpoint, save_checkpoint
from volseg.training.distributed import DistContext, all_reduce_sum
from volseg.training.metrics import confusion_counts, dice_from_counts
from volseg.training.progress import EpochLog, plot_progress
from volseg.training.schedule import learning_rate

log = logging.getLogger(__name__)
EMA_MOMENTUM = 0.9


@dataclass
class TrainParts:
    """Everything the loop needs; built by :func:`volseg.training.build.build_parts`."""

    network: torch.nn.Module          # possibly DDP-wrapped
    optimizer: torch.optim.Optimizer
    loss: Callable[[Any, Any], torch.Tensor]
    train_batches: Iterator[dict]
    val_batches: Iterator[dict] | None
    wait_time: Callable[[], float]    # seconds spent waiting for batches so far
    mode: str                         # "softmax" or "sigmoid"
    regions: dict | None = None       # sigmoid mode: region name → label values
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
    ema_dice: float | None = None
    best_ema: float = -1.0
    history: list = field(default_factory=list)


def _raw(net: torch.nn.Module) -> torch.nn.Module:
    return net.module if hasattr(net, "module") else net


def _to(batch: dict, device: torch.device) -> tuple[torch.Tensor, Any]:
    data = batch["data"].to(device, non_blocking=True)
    tgt = batch["target"]
    tgt = [t.to(device, non_blocking=True) for t in tgt] if isinstance(tgt, (list, tuple)) else tgt.to(device)
    return data, tgt


def train_epoch(parts: TrainParts, sched: Schedule, state: TrainState, ctx: DistContext,
                scaler: torch.amp.GradScaler | None, bar=None) -> tuple[float, float]:
    """One epoch of optimization. Returns (mean loss, seconds waited for data)."""
    parts.network.train()
    total_steps = sched.epochs * sched.iterations_per_epoch
    wait0, losses = parts.wait_time(), []
    device_type = ctx.device.type
    for it in range(sched.iterations_per_epoch):
        lr = learning_rate(sched.lr_schedule, sched.base_lr, state.epoch * sched.iterations_per_epoch + it, total_steps)
        for group in parts.optimizer.param_groups:
            group["lr"] = lr
        data, target = _to(next(parts.train_batches), ctx.device)
        parts.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type, enabled=sched.amp and device_type == "cuda"):
            loss = parts.loss(parts.network(data), target)
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
        if bar is not None:
            bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr:.2e}")
            bar.update()
    return float(sum(losses) / max(len(losses), 1)), parts.wait_time() - wait0


@torch.no_grad()
def validate(parts: TrainParts, sched: Schedule, ctx: DistContext) -> tuple[float, list[float]]:
    """Loss and pseudo-Dice per class on ``val_iterations`` validation patches (summed over ranks)."""
    if parts.val_batches is None or sched.val_iterations == 0:
        return float("nan"), []
    parts.network.eval()
    loss_sum, counts = torch.zeros(2, dtype=torch.float64), None
    for _ in range(sched.val_iterations):
        data, target = _to(next(parts.val_batches), ctx.device)
        with torch.autocast(ctx.device.type, enabled=sched.amp and ctx.device.type == "cuda"):
            out = parts.network(data)
            loss = parts.loss(out, target)
        full = out[0] if isinstance(out, (list, tuple)) else out
        tgt = target[0] if isinstance(target, (list, tuple)) else target
        if parts.mode == "sigmoid":
            from volseg.training.losses import labels_to_regions

            tgt = labels_to_regions(tgt, parts.regions)
        c = confusion_counts(full.float(), tgt, parts.mode).cpu()
        counts = c if counts is None else counts + c
        loss_sum += torch.tensor([float(loss), 1.0], dtype=torch.float64)
    if ctx.distributed:  # NCCL reduces CUDA tensors only; gloo takes CPU tensors
        counts = all_reduce_sum(counts.to(ctx.device), ctx).cpu()
        loss_sum = all_reduce_sum(loss_sum.to(ctx.device), ctx).cpu()
    return float(loss_sum[0] / loss_sum[1]), dice_from_counts(counts)


def checkpoint_state(parts: TrainParts, state: TrainState, plan_hash: str, config_name: str, fold: str,
                     sched_epochs: int) -> dict:
    return {"network": _raw(parts.network).state_dict(), "optimizer": parts.optimizer.state_dict(),
            "epoch": state.epoch, "ema_dice": state.ema_dice, "best_ema": state.best_ema,
            "plan_hash": plan_hash, "configuration": config_name, "fold": fold,
            "torch_rng": torch.get_rng_state(), "epochs": sched_epochs}


def resume(parts: TrainParts, path: Path, plan_hash: str, state: TrainState, sched: Schedule) -> None:
    """Load network, optimizer and counters from ``path`` into ``parts`` and ``state``.

    A schedule whose length a time limit fixed keeps that length (``sched.epochs``).
    """
    ck = load_checkpoint(path, plan_hash)
    if sched.time_limit is not None and "epochs" in ck:
        sched.epochs = int(ck["epochs"])
    _raw(parts.network).load_state_dict(ck["network"])
    parts.optimizer.load_state_dict(ck["optimizer"])
    state.epoch, state.ema_dice, state.best_ema = int(ck["epoch"]), ck["ema_dice"], float(ck["best_ema"])
    torch.set_rng_state(ck["torch_rng"])


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
    ``progress.png``; ``checkpoint_best.pt`` when the smoothed pseudo-Dice improves;
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
            train_loss, waited = train_epoch(parts, sched, state, ctx, scaler, bar)
            train_seconds = time.perf_counter() - t0
            val_loss, dice = validate(parts, sched, ctx)
            finite = [d for d in dice if not math.isnan(d)]
            mean_dice = float(sum(finite) / len(finite)) if finite else float("nan")
            if not math.isnan(mean_dice):
                state.ema_dice = mean_dice if state.ema_dice is None else (
                    EMA_MOMENTUM * state.ema_dice + (1 - EMA_MOMENTUM) * mean_dice)
            seconds = time.perf_counter() - t0
            record = {"epoch": state.epoch, "train_loss": train_loss, "val_loss": val_loss,
                      "pseudo_dice": dice, "pseudo_dice_mean": mean_dice, "pseudo_dice_ema": state.ema_dice,
                      "lr": parts.optimizer.param_groups[0]["lr"], "epoch_seconds": seconds, "train_seconds": train_seconds,
                      "data_wait_seconds": waited, "data_wait_share": waited / max(train_seconds, 1e-9)}
            state.epoch += 1
            if sched.time_limit is not None and state.epoch == 1:
                fit_epochs(sched, seconds, ctx, bar)
            improved = state.ema_dice is not None and state.ema_dice > state.best_ema
            if improved:
                state.best_ema = state.ema_dice
            if ctx.is_main:
                ck = checkpoint_state(parts, state, plan_hash, config_name, fold, sched.epochs)
                save_checkpoint(out_dir / "checkpoint_latest.pt", ck)
                if improved:
                    save_checkpoint(out_dir / "checkpoint_best.pt", ck)
                epoch_log.append(record)
                plot_progress(epoch_log.records(), out_dir / "progress.png")
                log.debug("epoch %d: %s", record["epoch"], record)
                bar.write(f"epoch {record['epoch']:>4}  loss {train_loss:.4f}  val {val_loss:.4f}  "
                          f"pseudo-Dice {mean_dice:.3f}  {seconds:.1f}s  data wait {100 * record['data_wait_share']:.1f}%")
            state.history.append(record)
        if ctx.is_main:
            save_checkpoint(out_dir / "checkpoint_final.pt",
                            checkpoint_state(parts, state, plan_hash, config_name, fold, sched.epochs))
    finally:
        bar.close()
    return state
