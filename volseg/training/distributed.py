"""torch.distributed set-up for ``torchrun`` launches (DDP); a no-op for one process."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def init_distributed(device: str = "auto") -> DistContext:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and join the process group.

    The backend is NCCL on CUDA and gloo on the CPU. Without those variables this is a
    single-process context on ``device`` ("cuda", "cpu" or "auto").
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
    return DistContext(rank, world, local, dev)


#: Seconds a rank waits, lock released, before it leaves the process group (see :func:`shutdown`).
SETTLE_SECONDS = 0.2


def shutdown(ctx: DistContext) -> None:
    """Leave the process group (a no-op for one process or when already left).

    gloo's worker threads drop their references to a collective's tensors a moment after the
    collective returns, and that drop takes the interpreter lock. A rank that exits right after
    a collective (for example with an error that every rank raises) can reach interpreter
    shutdown first, and the process then aborts with SIGABRT instead of exiting with its error.
    A short sleep hands the lock to those threads first.
    """
    if ctx.distributed and dist.is_initialized():
        time.sleep(SETTLE_SECONDS)
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum ``t`` over ranks (in place) and return it."""
    if ctx.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def digest(*parts: object) -> str:
    """SHA-256 (hex) of the text of ``parts``."""
    h = hashlib.sha256()
    for p in parts:
        h.update(repr(p).encode())
        h.update(b"\0")
    return h.hexdigest()


def check_same_on_every_rank(ctx: DistContext, digests: dict[str, str], where: str) -> None:
    """Stop every rank with the same one-line error unless all ranks hold the same ``digests``.

    Args:
        ctx: This process's place in the run (a single process passes at once).
        digests: What must agree, e.g. ``{"plan": ..., "preprocessed data": ..., "fold split": ...}``
            (64 hex characters each).
        where: The file or folder the error names.

    Raises:
        VolsegError: Naming the first thing that differs and the ranks (and hosts) that differ from rank 0.
    """
    if not ctx.distributed:
        return
    from volseg.errors import VolsegError

    names = list(digests)
    mine = torch.tensor([list(bytes.fromhex(digests[n])) for n in names], dtype=torch.uint8)
    host = socket.gethostname().encode()[:64].ljust(64, b"\0")
    mine_host = torch.tensor(list(host), dtype=torch.uint8)
    device = ctx.device if dist.get_backend() == "nccl" else torch.device("cpu")
    gathered = [torch.zeros_like(mine, device=device) for _ in range(ctx.world_size)]
    hosts = [torch.zeros_like(mine_host, device=device) for _ in range(ctx.world_size)]
    dist.all_gather(gathered, mine.to(device))
    dist.all_gather(hosts, mine_host.to(device))
    for i, name in enumerate(names):
        other = [r for r in range(1, ctx.world_size) if not torch.equal(gathered[r][i], gathered[0][i])]
        if other:
            who = ", ".join(f"{r} ({bytes(hosts[r].cpu().tolist()).rstrip(bytes(1)).decode(errors='replace')})"
                            for r in other)
            raise VolsegError(where, f"the {name} differs between rank 0 and rank(s) {who} of {ctx.world_size}; "
                              "every rank must read the same plan folder (a shared file system, or identical "
                              "copies on every node)")
