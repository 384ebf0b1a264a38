"""A process of the two-rank DDP test (importable by name, as torch.multiprocessing needs)."""

import os

import torch


def ddp_worker(rank: int, world: int, port: int, plan_dir: str, out: str, epochs: int = 1, iterations: int = 3,
               seed: int | None = None) -> None:
    """Train fold 0 as rank ``rank``; writes ``OUT/rankR.pt``: its final weights and, per epoch,
    its own training loss and the validation loss and score reduced over the ranks."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import volseg.training.run as run_mod
    from volseg.training import trainer

    captured = {}
    original = trainer.run_training

    def spy(parts, *args, **kwargs):
        state = original(parts, *args, **kwargs)
        captured["weights"] = {k: v.detach().clone() for k, v in trainer._raw(parts.network).state_dict().items()}
        captured["history"] = [{k: r[k] for k in ("train_loss", "val_loss", "score", "score_ema", "detection_f1")
                                if k in r} for r in state.history]
        return state

    run_mod.run_training = spy
    kw = {} if seed is None else {"seed": seed}
    run_mod.train(plan_dir, out, fold=0, epochs=epochs, iterations=iterations, progress=False, device="cpu", **kw)
    torch.save({"weights": captured["weights"], "history": captured["history"]}, f"{out}/rank{rank}.pt")


def ddp_mismatch_worker(rank: int, world: int, port: int, plan_dirs: list, out: str) -> None:
    """Rank ``r`` trains from ``plan_dirs[r]``; writes the one-line error it stops with."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from volseg.errors import VolsegError
    from volseg.training.distributed import shutdown, DistContext
    import volseg.training.run as run_mod

    try:
        run_mod.train(plan_dirs[rank], f"{out}/model{rank}", fold=0, epochs=1, iterations=1, progress=False,
                      device="cpu")
        message = "trained"
    except VolsegError as e:
        message = str(e)
    finally:
        shutdown(DistContext(rank, world))
    with open(f"{out}/rank{rank}.txt", "w") as f:
        f.write(message)
