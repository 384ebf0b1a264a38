"""A training run killed right after its second epoch's checkpoint (for the resume tests)."""

import pytest


class Killed(Exception):
    pass


def train_killed_after_second_epoch(monkeypatch, train, plan_dir, out, **kw) -> list[int]:
    """Run ``train(plan_dir, out, **kw)`` until epoch 2's ``checkpoint_latest.pt`` is on disk and
    nothing after it; returns the epoch counts the progress plot saw ([1, 2])."""
    import volseg.training.trainer as trainer

    plot, calls = trainer.plot_progress, []

    def killed_after_second_epoch(records, path):
        calls.append(len(records))
        if len(records) == 2:
            raise Killed
        plot(records, path)

    monkeypatch.setattr(trainer, "plot_progress", killed_after_second_epoch)
    with pytest.raises(Killed):
        train(plan_dir, out, **kw)
    monkeypatch.setattr(trainer, "plot_progress", plot)
    return calls
