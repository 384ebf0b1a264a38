"""Per-epoch training log (JSON lines) and the ``progress.png`` curves."""

from __future__ import annotations

import json
import os
from pathlib import Path

from volseg.io.atomic import atomic_path


class EpochLog:
    """Append-only JSON-lines log, one record per epoch, truncated on resume to the epochs kept."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def records(self) -> list[dict]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill
                break
        return out

    def truncate(self, epochs: int) -> None:
        """Keep the records of the first ``epochs`` epochs (those covered by the checkpoint)."""
        kept = [r for r in self.records() if r.get("epoch", 0) < epochs]
        text = "".join(json.dumps(r) + "\n" for r in kept)
        with atomic_path(self.path) as tmp:
            tmp.write_text(text, encoding="utf-8")

    def append(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()


def learned_nothing(fold_dir: str | os.PathLike, score_name: str = "validation score") -> str | None:
    """One line saying that a fold learned nothing (its validation score stayed 0 in every
    epoch), or None: it learned something, or it had no validation to tell (``--fold all``)."""
    records = EpochLog(Path(fold_dir) / "log.jsonl").records()
    scores = [r.get("score") for r in records]
    scores = [float(s) for s in scores if isinstance(s, (int, float)) and s == s]  # NaN: no validation batches
    if not scores or max(scores) > 0:
        return None
    return (f"{fold_dir}: training learned nothing: the {score_name} stayed 0.000 in all {len(scores)} epochs "
            "(the checkpoints are kept); train longer (--epochs, --iters) or check the labels")


def plot_progress(records: list[dict], path: str | os.PathLike) -> None:
    """Loss, validation score (the task's, e.g. pseudo-Dice), learning rate, epoch time and data-wait share per epoch, as a PNG."""
    if not records:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in records]
    fig, axes = plt.subplots(3, 1, figsize=(9, 10), sharex=True)
    ax = axes[0]
    ax.plot(ep, [r["train_loss"] for r in records], label="train loss")
    if any("val_loss" in r for r in records):
        ax.plot(ep, [r.get("val_loss", float("nan")) for r in records], label="validation loss")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    if any("score" in r for r in records):
        ax2.plot(ep, [_num(r.get("score")) for r in records], "g:", label="validation score")
        ax2.plot(ep, [_num(r.get("score_ema")) for r in records], "g-", label="validation score (EMA)")
    ax2.set_ylabel("validation score")
    ax.legend(loc="upper left")
    ax2.legend(loc="upper right")
    axes[1].plot(ep, [r["epoch_seconds"] for r in records], label="epoch time (s)")
    axes[1].set_ylabel("seconds")
    ax3 = axes[1].twinx()
    ax3.plot(ep, [100 * r.get("data_wait_share", 0.0) for r in records], "r-", label="data wait (%)")
    ax3.set_ylabel("data wait (%)")
    axes[1].legend(loc="upper left")
    ax3.legend(loc="upper right")
    axes[2].plot(ep, [r["lr"] for r in records])
    axes[2].set_ylabel("learning rate")
    axes[2].set_xlabel("epoch")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)


def _num(value) -> float:
    return float("nan") if value is None else float(value)
