"""The detection task (Retina U-Net) through the one trainer loop: --resume, --time-limit, DDP and
the best checkpoint chosen by the detection F1, as tests/training/test_train_run.py checks them
for segmentation."""

import json
import math

import pytest
from killed_run import train_killed_after_second_epoch
import torch
import torch.multiprocessing as mp

from volseg.cli.main import main
from volseg.model.checkpoint import load_checkpoint
from volseg.planning.plans import load_plans, save_plans


@pytest.fixture(scope="module")
def det_plan(tmp_path_factory):
    """A planned and preprocessed 3-case lung demo (every case has nodules) whose 3d_cpu
    configuration (an (8, 20, 20) patch, batch 2) trains an epoch in well under a second."""
    import volseg
    from volseg.demo import generate_lung_dataset

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("det_train")
    data = generate_lung_dataset(root / "data", num_cases=3, num_test=1, shape=(24, 48, 48), seed=6)
    plans = volseg.plan(data, root / "plan", device="cpu", num_workers=1, progress=False, cpu_gflop=2.0)
    assert plans["task"] == "detection"
    cfg = plans["configurations"]["3d_cpu"]
    assert cfg["network"]["architecture"] == "retina_unet"
    cfg["training"].update(epochs=1, iterations_per_epoch=2, val_iterations=1, num_workers=0)
    cfg["batch_size"] = 2
    save_plans(plans, root / "plan" / "plans.json")
    return root / "plan"


def _weights(path):
    return load_checkpoint(path)["network"]


def _log(fold_dir):
    return [json.loads(x) for x in (fold_dir / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_killed_and_resumed_detection_run_gives_the_uninterrupted_weights(det_plan, tmp_path, monkeypatch, workers):
    """A detection run stopped right after its second epoch's checkpoint and resumed ends
    bit-identical to the uninterrupted run: weights, optimizer, and every logged loss and F1."""
    from volseg.errors import ModelError
    from volseg.training.run import train as train_only

    torch.set_num_threads(1)
    kw = dict(fold=0, epochs=3, iterations=2, progress=False, num_workers=workers, seed=11)
    whole = train_only(det_plan, tmp_path / "whole", **kw).fold_dir
    calls = train_killed_after_second_epoch(monkeypatch, train_only, det_plan, tmp_path / "cut", **kw)
    cut = tmp_path / "cut" / "fold_0"
    assert calls == [1, 2]
    assert load_checkpoint(cut / "checkpoint_latest.pt")["epoch"] == 2
    at_cut = _weights(cut / "checkpoint_latest.pt")
    assert not (cut / "checkpoint_final.pt").exists()
    with pytest.raises(ModelError, match="pass --resume"):
        train_only(det_plan, tmp_path / "cut", **kw)

    resumed = train_only(det_plan, tmp_path / "cut", resume_training=True, **kw).fold_dir
    assert load_checkpoint(resumed / "checkpoint_latest.pt")["epoch"] == 3
    a, b = load_checkpoint(whole / "checkpoint_final.pt"), load_checkpoint(resumed / "checkpoint_final.pt")
    assert a["network"].keys() == b["network"].keys()
    assert all(torch.equal(a["network"][k], b["network"][k]) for k in a["network"])
    assert len(a["optimizer"]["state"]) == len(b["optimizer"]["state"]) > 0
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):  # AdamW moments
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # the resumed run trained its third epoch: the weights moved from those it resumed from
    assert any(not torch.equal(a["network"][k], at_cut[k]) for k in at_cut)
    la, lb = _log(whole), _log(resumed)
    assert [r["epoch"] for r in lb] == [0, 1, 2]
    for key in ("train_loss", "loss_terms", "val_loss", "score", "score_ema", "detection_f1"):
        assert [r[key] for r in lb] == [r[key] for r in la], key
    assert set(la[0]["loss_terms"]) == {"seg", "cls", "box"}
    assert (a["score_ema"], a["best_score"]) == (b["score_ema"], b["best_score"])


def test_time_limit_shortens_the_detection_schedule_and_resume_keeps_it(det_plan, tmp_path, capsys):
    from volseg.workflow import train_fold as train

    torch.set_num_threads(1)
    model = tmp_path / "m"
    # a limit far below one epoch: training stops after the first, with the schedule ended
    status = main(["train", str(det_plan), "-o", str(model), "--fold", "0", "--epochs", "5", "--iters", "2",
                   "--time-limit", "0.0001", "--no-validation", "--no-progress"])
    out, err = capsys.readouterr()
    assert "1 of 5 epochs" in out and "Traceback" not in err
    # one epoch of two iterations rarely finds a nodule: the run then ends, as it should, with
    # status 3 and "learned nothing" (checkpoints kept) rather than 0
    assert status == 0 or (status == 3 and "learned nothing" in err), (status, err)
    fold_dir = model / "fold_0"
    ck = load_checkpoint(fold_dir / "checkpoint_final.pt")
    assert ck["epoch"] == 1 and ck["epochs"] == 1
    assert load_checkpoint(fold_dir / "checkpoint_latest.pt")["epochs"] == 1
    log = _log(fold_dir)
    assert len(log) == 1 and set(log[0]["loss_terms"]) == {"seg", "cls", "box"}
    before = _weights(fold_dir / "checkpoint_latest.pt")
    train(det_plan, model, fold=0, epochs=5, iterations=2, progress=False, validate=False,
          time_limit_minutes=1e-4, resume_training=True)
    assert load_checkpoint(fold_dir / "checkpoint_latest.pt")["epoch"] == 1  # nothing left to do
    assert len(_log(fold_dir)) == 1
    after = _weights(fold_dir / "checkpoint_final.pt")
    assert all(torch.equal(before[k], after[k]) for k in before)
    # without a time limit, resuming runs the asked-for epochs from where the limited run ended
    train(det_plan, model, fold=0, epochs=2, iterations=2, progress=False, validate=False, resume_training=True)
    assert load_checkpoint(fold_dir / "checkpoint_final.pt")["epoch"] == 2
    assert [r["epoch"] for r in _log(fold_dir)] == [0, 1]


@pytest.mark.slow
def test_ddp_two_cpu_ranks_stay_in_sync_for_detection(det_plan, tmp_path, free_port):
    from ddp_worker import ddp_worker

    out = tmp_path / "ddp"
    out.mkdir()
    mp.spawn(ddp_worker, args=(2, free_port, str(det_plan), str(out), 2, 2, 5), nprocs=2, join=True)
    r0 = torch.load(out / "rank0.pt", weights_only=True)
    r1 = torch.load(out / "rank1.pt", weights_only=True)
    w0, w1 = r0["weights"], r1["weights"]
    assert w0.keys() == w1.keys()
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    saved = _weights(out / "fold_0" / "checkpoint_final.pt")
    assert all(torch.equal(w0[k], saved[k]) for k in w0)  # rank 0 wrote what both hold
    # each rank trained on its own half of the batch (its local loss differs), yet the
    # validation loss and detection F1 are the same on both: the statistics were summed over ranks
    h0, h1 = r0["history"], r1["history"]
    assert len(h0) == len(h1) == 2
    assert [h["train_loss"] for h in h0] != [h["train_loss"] for h in h1]
    for key in ("val_loss", "score", "score_ema", "detection_f1"):
        assert [h[key] for h in h0] == [h[key] for h in h1], key
    assert [r["score"] for r in _log(out / "fold_0")] == [h["score"] for h in h0]
    # the run moved away from the seeded initial weights (on both ranks alike)
    from volseg.tasks import make_task

    plans = load_plans(det_plan / "plans.json")
    config = plans["configurations"]["3d_cpu"]
    torch.manual_seed(5)
    init = make_task(plans).build_network(config).state_dict()
    assert any(not torch.equal(init[k], w0[k]) for k in w0)


def _validation_f1(plan_dir, model_dir, weights, epoch: int, seed: int) -> float:
    """The detection F1 of ``weights`` on the validation patch of ``epoch`` (val_iterations = 1),
    computed here from the task's box statistics, outside the trainer."""
    from volseg.training.build import build_parts
    from volseg.training.distributed import DistContext
    from volseg.training.splits import fold_cases

    plans = load_plans(plan_dir / "plans.json")
    config = plans["configurations"]["3d_cpu"]
    splits = json.loads((model_dir / "splits.json").read_text())
    train_ids, val_ids = fold_cases(splits, "0", model_dir / "splits.json")
    parts = build_parts(plans, config, plan_dir / "preprocessed" / "3d_cpu", train_ids, val_ids, DistContext(),
                        num_workers=0, seed=seed)
    try:
        parts.network.load_state_dict(weights)
        parts.network.eval()
        parts.val_batches.seek(epoch)
        batch = next(parts.val_batches)
        with torch.no_grad():
            out = parts.network(batch["data"])
        stats = parts.task.batch_stats(out, batch["target"])
        assert stats.shape[1] == 3  # (tp, fp, fn) per score threshold
        return parts.task.score(stats)[0]
    finally:
        parts.close()


def test_best_checkpoint_is_chosen_by_the_detection_f1(det_plan, tmp_path, capsys):
    """The score the loop logs, smooths and keeps as the checkpoint's best_score is the task's
    detection F1 on the validation patches, and checkpoint_best.pt holds the epoch of its best EMA."""
    from volseg.tasks import make_task
    from volseg.training.run import train as train_only

    torch.set_num_threads(1)
    plans = load_plans(det_plan / "plans.json")
    assert make_task(plans).score_name == "detection F1"
    tcfg = plans["configurations"]["3d_cpu"]["training"]
    assert tcfg["best_checkpoint"] == "score_ema"
    m = tcfg["score_ema_momentum"]
    seed = 11
    trained = train_only(det_plan, tmp_path / "m", fold=0, epochs=3, iterations=2, progress=False, num_workers=0,
                         seed=seed)
    fold_dir = trained.fold_dir
    assert trained.val_ids  # a held-out case: the loop validated every epoch
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch")]
    assert len(printed) == 3 and all("detection F1" in line for line in printed)

    log = _log(fold_dir)
    assert len(log) == 3
    ema = None
    for r in log:
        # the score is the best F1 over the score thresholds, with its threshold logged
        assert 0.0 <= r["score"] <= 1.0 and not math.isnan(r["score"])
        assert len(r["detection_f1"]) > 1 and r["score"] == pytest.approx(max(r["detection_f1"]), abs=1e-4)
        assert r["best_threshold"] is not None
        ema = r["score"] if ema is None else m * ema + (1 - m) * r["score"]
        assert r["score_ema"] == pytest.approx(ema, abs=1e-12)

    best_epoch = max(range(len(log)), key=lambda e: (log[e]["score_ema"], -e))  # the first of the best
    best = load_checkpoint(fold_dir / "checkpoint_best.pt")
    final = load_checkpoint(fold_dir / "checkpoint_final.pt")
    assert best["epoch"] == best_epoch + 1
    assert best["best_score"] == final["best_score"] == max(r["score_ema"] for r in log)
    assert final["score_ema"] == log[-1]["score_ema"]
    # recomputed outside the loop: the logged score is the detection F1 of those very weights
    for ck in (best, final):
        e = ck["epoch"] - 1
        assert _validation_f1(det_plan, fold_dir.parent, ck["network"], e, seed) == log[e]["score"], e
