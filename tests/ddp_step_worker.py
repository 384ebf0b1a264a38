"""One optimizer step of the tiny plan's network on a fixed batch, in one process or as one of
two DDP ranks each holding half of the batch (importable by name, as torch.multiprocessing needs)."""

import os

import numpy as np
import torch


def fixed_batch(plan_dir: str, size: int):
    """The plan, its 3d_cpu configuration, and ``size`` fixed random samples with their targets."""
    from volseg.planning.plans import load_plans
    from volseg.tasks import make_task

    plans = load_plans(f"{plan_dir}/plans.json")
    config = plans["configurations"]["3d_cpu"]
    task = make_task(plans)
    task.prepare(config)
    g = torch.Generator().manual_seed(1)
    channels = len(plans["dataset"]["channel_names"])
    data = torch.randn(size, channels, *config["patch_size"], generator=g)
    seg = torch.randint(0, len(plans["outputs"]["class_values"]), (size, 1, *config["patch_size"]), generator=g)
    batch = task.targets(config, training=True)(seg=seg.numpy().astype(np.int16))
    target = [torch.from_numpy(t).long() for t in batch["target"]] if isinstance(batch["target"], list) \
        else torch.from_numpy(batch["target"]).long()
    return plans, config, task, data, target


def one_step(plan_dir: str, data: torch.Tensor, target, ddp: bool) -> dict:
    """The gradient of one step from the seeded initial weights (what DDP averages), and its loss."""
    from volseg.training.trainer import total_loss

    plans, config, task, _, _ = fixed_batch(plan_dir, 1)
    torch.manual_seed(0)
    net = task.build_network(config)
    if ddp:
        net = torch.nn.parallel.DistributedDataParallel(net)
    net.train()
    loss = total_loss(task.loss(config)(net(data), target))
    loss.backward()
    raw = net.module if ddp else net
    return {"loss": loss.detach(), **{k: p.grad.detach().clone() for k, p in raw.named_parameters()}}


def ddp_step_worker(rank: int, world: int, port: int, plan_dir: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    import torch.distributed as dist

    dist.init_process_group("gloo")
    try:
        _, _, _, data, target = fixed_batch(plan_dir, 4)
        half = slice(2 * rank, 2 * rank + 2)
        mine = [t[half] for t in target] if isinstance(target, list) else target[half]
        torch.save(one_step(plan_dir, data[half], mine, ddp=True), f"{out}/step_rank{rank}.pt")
    finally:
        dist.destroy_process_group()
