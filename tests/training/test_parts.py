import json

import pytest
import torch

from volseg.errors import ModelError
from volseg.training.metrics import confusion_counts, dice_from_counts
from volseg.training.progress import EpochLog
from volseg.training.schedule import learning_rate
from volseg.training.splits import fold_cases, load_or_create_splits, make_splits

IDS = [f"c{i:02d}" for i in range(12)]


def test_splits_partition_cases_reproducibly():
    a, b = make_splits(IDS), make_splits(list(reversed(IDS)))
    assert a == b and len(a) == 5
    vals = [c for f in a for c in f["val"]]
    assert sorted(vals) == IDS
    for f in a:
        assert not set(f["val"]) & set(f["train"]) and len(f["val"]) + len(f["train"]) == 12


def test_splits_written_once_and_user_file_respected(tmp_path):
    p = tmp_path / "splits.json"
    first = load_or_create_splits(p, IDS)
    assert json.loads(p.read_text()) == first
    custom = [{"train": IDS[:10], "val": IDS[10:]}]
    p.write_text(json.dumps(custom))
    assert load_or_create_splits(p, IDS) == custom
    assert fold_cases(custom, 0) == (IDS[:10], IDS[10:])
    assert fold_cases(custom, "all")[0] == IDS


def test_splits_bad_inputs(tmp_path):
    p = tmp_path / "splits.json"
    p.write_text(json.dumps([{"train": ["zz"], "val": IDS[:2]}]))
    with pytest.raises(ModelError, match="not preprocessed: \\['zz'\\]"):
        load_or_create_splits(p, IDS)
    with pytest.raises(ModelError, match="fold 7 does not exist"):
        fold_cases(make_splits(IDS), 7)


def test_poly_schedule():
    sched = {"name": "poly", "exponent": 0.9}
    assert learning_rate(sched, 0.01, 0, 100) == pytest.approx(0.01)
    assert learning_rate(sched, 0.01, 50, 100) == pytest.approx(0.01 * 0.5 ** 0.9)
    assert learning_rate(sched, 0.01, 100, 100) == 0.0
    with pytest.raises(ValueError, match="unknown lr_schedule"):
        learning_rate({"name": "step"}, 0.01, 0, 1)


def test_poly_schedule_reads_its_exponent_from_the_plan():
    assert learning_rate({"name": "poly", "exponent": 2.0}, 0.01, 50, 100) == pytest.approx(0.01 * 0.25)
    with pytest.raises(KeyError, match="exponent"):  # no exponent of its own besides the planner's
        learning_rate({"name": "poly"}, 0.01, 50, 100)


def test_pseudo_dice_counts():
    logits = torch.zeros(1, 3, 2, 2, 2)
    logits[0, 1, 0] = 5  # predict class 1 in the first z slice
    target = torch.zeros(1, 1, 2, 2, 2, dtype=torch.long)
    target[0, 0, 0, 0] = 1  # 2 voxels of class 1
    counts = confusion_counts(logits, target)
    assert counts[:, 0].tolist() == [2, 2, 0]
    d = dice_from_counts(counts)
    assert d[0] == pytest.approx(2 * 2 / (4 + 2)) and d[1] != d[1]  # class 2 absent → NaN


def test_epoch_log_truncates_on_resume(tmp_path):
    log = EpochLog(tmp_path / "log.jsonl")
    for e in range(5):
        log.append({"epoch": e})
    with open(log.path, "a") as f:
        f.write('{"epoch": 5, "trunc')  # a line cut by a kill
    assert [r["epoch"] for r in log.records()] == [0, 1, 2, 3, 4]
    log.truncate(3)
    assert [r["epoch"] for r in log.records()] == [0, 1, 2]


def test_persistent_non_finite_loss_stops_training_without_touching_the_weights():
    """Regression: a NaN loss trained NaN weights for a whole run and exited 0."""
    from volseg.training.distributed import DistContext
    from volseg.training.trainer import (MAX_NONFINITE_STEPS, Schedule, TrainingDiverged, TrainParts, TrainState,
                                         train_epoch)

    net = torch.nn.Conv3d(1, 2, 3, padding=1)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    batches = iter([{"data": torch.randn(1, 1, 4, 4, 4), "target": torch.zeros(1, 1, 4, 4, 4)}] * 10)
    parts = TrainParts(task=None, network=net, optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
                       loss=lambda out, tgt: {"x": out.sum() * float("nan")}, train_batches=batches,
                       val_batches=None, wait_time=lambda: 0.0)
    sched = Schedule(epochs=1, iterations_per_epoch=5, val_iterations=0, base_lr=0.1,
                     lr_schedule={"name": "constant"}, grad_clip=None)
    with pytest.raises(TrainingDiverged, match=f"{MAX_NONFINITE_STEPS} consecutive non-finite losses"):
        train_epoch(parts, sched, TrainState(), DistContext(), None)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
