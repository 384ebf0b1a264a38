"""Plan → training parts: network, optimizer, loss and data loaders (one function each)."""

from __future__ import annotations

from pathlib import Path

import torch

from volseg.training.distributed import DistContext
from volseg.training.trainer import TrainParts


def build_network(plans: dict, config: dict, ctx: DistContext) -> torch.nn.Module:
    """The configuration's network on ``ctx.device``, DDP-wrapped when distributed."""
    from volseg.networks import from_plans

    net = from_plans(config["network"], len(plans["dataset"]["channel_names"]), plans["outputs"]["num_outputs"])
    net = net.to(ctx.device)
    if ctx.distributed:
        ids = [ctx.local_rank] if ctx.device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=ids)
    return net


def build_optimizer(config: dict, network: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum (the default) or AdamW, from ``training.optimizer``."""
    opt = config["training"]["optimizer"]
    if opt["name"] == "sgd":
        return torch.optim.SGD(network.parameters(), lr=opt["lr"], momentum=opt.get("momentum", 0.99),
                               nesterov=opt.get("nesterov", True), weight_decay=opt.get("weight_decay", 3e-5))
    if opt["name"] == "adamw":
        return torch.optim.AdamW(network.parameters(), lr=opt["lr"], weight_decay=opt.get("weight_decay", 1e-2))
    raise ValueError(f"unknown optimizer {opt['name']!r}; expected sgd or adamw")


def ds_scales(config: dict) -> list[list[float]] | None:
    """Per-output downsampling factors of the deep-supervision targets (None without deep supervision)."""
    from volseg.networks import deep_supervision_scales

    if not config["network"].get("deep_supervision", True):
        return None
    return [list(s) for s in deep_supervision_scales(config["network"]["strides"])]


def build_parts(plans: dict, config: dict, preprocessed: Path, train_ids: list[str], val_ids: list[str],
                ctx: DistContext, num_workers: int, seed: int) -> TrainParts:
    """Every part of the training loop for one fold."""
    from volseg.data import load_cases, make_loader
    from volseg.training.losses import build_loss

    network = build_network(plans, config, ctx)
    optimizer = build_optimizer(config, network)
    mode = plans["outputs"]["mode"]
    scales = ds_scales(config)
    loss = build_loss(config["training"]["loss"], mode=mode, deep_supervision=scales is not None,
                      regions=plans["outputs"].get("regions"))
    common = dict(patch_size=config["patch_size"], batch_size=config["batch_size"],
                  deep_supervision_scales=scales,
                  foreground_oversampling=config["training"].get("foreground_oversampling", 0.33),
                  rank=ctx.rank, world_size=ctx.world_size, pin_memory=ctx.device.type == "cuda")
    train_loader = make_loader(load_cases(preprocessed, train_ids), augmentation=config["augmentation"],
                               training=True, num_workers=num_workers, seed=seed, **common)
    val_loader = None
    if val_ids:
        val_loader = make_loader(load_cases(preprocessed, val_ids), augmentation=None, training=False,
                                 num_workers=min(num_workers, 1), seed=seed + 7919, **common)

    def close() -> None:
        train_loader.close()
        if val_loader is not None:
            val_loader.close()

    def waited() -> float:
        return train_loader.wait_time

    return TrainParts(network=network, optimizer=optimizer, loss=loss, train_batches=iter(train_loader),
                      val_batches=iter(val_loader) if val_loader is not None else None,
                      wait_time=waited, mode=mode,
                      regions=plans["outputs"].get("regions"), close=close)
