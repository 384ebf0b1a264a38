"""Plan → training parts: task, network, optimizer, loss and data loaders (one function each)."""

from __future__ import annotations

from pathlib import Path

import torch

from volseg.tasks import Task, make_task
from volseg.training.distributed import DistContext
from volseg.training.trainer import TrainParts


def build_network(task: Task, config: dict, ctx: DistContext) -> torch.nn.Module:
    """The task's network of ``config`` on ``ctx.device``, DDP-wrapped when distributed."""
    net = task.build_network(config).to(ctx.device)
    if ctx.distributed:
        ids = [ctx.local_rank] if ctx.device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=ids)
    return net


def build_optimizer(config: dict, network: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD or AdamW as ``training.optimizer`` says; every setting comes from the plan (the planner's
    values are :data:`volseg.planning.planner.SGD_OPTIMIZER`), none has a fallback here."""
    opt = config["training"]["optimizer"]
    if opt["name"] == "sgd":
        return torch.optim.SGD(network.parameters(), lr=opt["lr"], momentum=opt["momentum"],
                               nesterov=opt["nesterov"], weight_decay=opt["weight_decay"])
    if opt["name"] == "adamw":
        return torch.optim.AdamW(network.parameters(), lr=opt["lr"], weight_decay=opt["weight_decay"])
    raise ValueError(f"unknown optimizer {opt['name']!r}; expected sgd or adamw")


def build_parts(plans: dict, config: dict, preprocessed: Path, train_ids: list[str], val_ids: list[str],
                ctx: DistContext, num_workers: int, seed: int) -> TrainParts:
    """Every part of the training loop for one fold, the task-specific ones from the plan's task."""
    from volseg.data import load_cases, make_loader

    task = make_task(plans)
    task.prepare(config)
    network = build_network(task, config, ctx)
    optimizer = build_optimizer(config, network)
    data = task.loader_options(config)
    common = dict(patch_size=config["patch_size"], batch_size=config["batch_size"],
                  foreground_oversampling=config["training"]["foreground_oversampling"],
                  rank=ctx.rank, world_size=ctx.world_size, pin_memory=ctx.device.type == "cuda",
                  random_offset=data["random_offset"], class_weights=data.get("class_weights"))
    train_loader = make_loader(load_cases(preprocessed, train_ids, data["labels"]),
                               augmentation=config["augmentation"], training=True, num_workers=num_workers,
                               seed=seed, targets=task.targets(config, training=True), **common)
    val_loader = None
    if val_ids:
        val_loader = make_loader(load_cases(preprocessed, val_ids, data["labels"]), augmentation=None, training=False,
                                 num_workers=min(num_workers, 1), seed=seed + 7919,
                                 targets=task.targets(config, training=False), **common)

    def close() -> None:
        train_loader.close()
        if val_loader is not None:
            val_loader.close()

    def waited() -> float:
        return train_loader.wait_time

    return TrainParts(task=task, network=network, optimizer=optimizer, loss=task.loss(config),
                      train_batches=iter(train_loader),
                      val_batches=iter(val_loader) if val_loader is not None else None,
                      wait_time=waited, close=close)
