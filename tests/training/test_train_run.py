import json

import pytest
from killed_run import train_killed_after_second_epoch
import torch
import torch.multiprocessing as mp
from ddp_worker import ddp_worker

from volseg.cli.main import main
from volseg.errors import ModelError, PlanError
from volseg.model.checkpoint import load_checkpoint
from volseg.workflow import train_fold as train


def _weights(path):
    return load_checkpoint(path)["network"]


def test_tiny_run_lowers_loss_and_writes_model_folder(tiny_plan, tmp_path):
    fold_dir = train(tiny_plan, tmp_path / "model", fold=0, epochs=4, iterations=6, progress=False)
    records = [json.loads(line) for line in (fold_dir / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2, 3]
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    assert 0.0 <= records[-1]["data_wait_share"] <= 1.0
    for name in ("checkpoint_latest.pt", "checkpoint_final.pt", "progress.png"):
        assert (fold_dir / name).is_file(), name
    model = fold_dir.parent
    for name in ("plans.json", "model.json", "splits.json", "fingerprint.json", "dataset.json", "postprocessing.json"):
        assert (model / name).is_file(), name
    torch.load(fold_dir / "checkpoint_final.pt", weights_only=True)
    # the held-out case was predicted with the sliding window and scored, and rules were chosen
    summary = json.loads((fold_dir / "validation" / "evaluation" / "summary.json").read_text())
    assert summary["counts"]["evaluated"] == 1 and summary["counts"]["missing_references"] == 0
    assert len(list((fold_dir / "validation").glob("*.nii.gz"))) == 1
    # the rules were chosen on that same prediction: their baseline is the evaluation's Dice per class
    post = json.loads((model / "postprocessing.json").read_text())
    assert post["num_cases"] == 1
    dice = {str(v): summary["labels"][k]["mean"]["dice"] for k, v in summary["settings"]["labels"].items()}
    assert post["scores_before"].keys() == dice.keys()
    assert all(post["scores_before"][c] == pytest.approx(dice[c]) for c in dice)


def test_same_seed_same_weights(tiny_plan, tmp_path):
    a = train(tiny_plan, tmp_path / "a", fold=0, epochs=1, iterations=2, progress=False, seed=3, validate=False)
    b = train(tiny_plan, tmp_path / "b", fold=0, epochs=1, iterations=2, progress=False, seed=3, validate=False)
    wa, wb = _weights(a / "checkpoint_final.pt"), _weights(b / "checkpoint_final.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_continues_where_it_stopped(tiny_plan, tmp_path):
    model = tmp_path / "m"
    fold_dir = train(tiny_plan, model, fold=1, epochs=1, iterations=2, progress=False, validate=False)
    assert load_checkpoint(fold_dir / "checkpoint_latest.pt")["epoch"] == 1
    with pytest.raises(ModelError, match="pass --resume"):
        train(tiny_plan, model, fold=1, epochs=2, iterations=2, progress=False, validate=False)
    train(tiny_plan, model, fold=1, epochs=2, iterations=2, progress=False, resume_training=True, validate=False)
    assert load_checkpoint(fold_dir / "checkpoint_latest.pt")["epoch"] == 2
    assert [json.loads(x)["epoch"] for x in (fold_dir / "log.jsonl").read_text().splitlines()] == [0, 1]


def test_epochs_within_a_time_limit():
    from volseg.training.trainer import epochs_within

    assert epochs_within(600.0, 25.0, 50) == 24
    assert epochs_within(600.0, 5.0, 50) == 50  # never more than asked for
    assert epochs_within(1.0, 30.0, 50) == 1  # the first epoch has run already


def test_time_limit_shortens_the_schedule_and_resume_keeps_it(tiny_plan, tmp_path):
    model = tmp_path / "m"
    # a limit far below one epoch: training stops after the first, with the schedule ended
    assert main(["train", str(tiny_plan), "-o", str(model), "--fold", "0", "--epochs", "5", "--iters", "2",
                 "--time-limit", "0.0001", "--no-validation", "--no-progress"]) == 0
    fold_dir = model / "fold_0"
    ck = load_checkpoint(fold_dir / "checkpoint_final.pt")
    assert ck["epoch"] == 1 and ck["epochs"] == 1
    assert len((fold_dir / "log.jsonl").read_text().splitlines()) == 1
    train(tiny_plan, model, fold=0, epochs=5, iterations=2, progress=False, validate=False,
          time_limit_minutes=1e-4, resume_training=True)
    assert load_checkpoint(fold_dir / "checkpoint_latest.pt")["epoch"] == 1  # nothing left to do
    with pytest.raises(ValueError, match="time limit must be positive"):
        train(tiny_plan, tmp_path / "n", fold=0, epochs=1, iterations=1, progress=False, validate=False,
              time_limit_minutes=0)
    with pytest.raises(SystemExit) as e:  # a usage error: status 2, "expected a positive number" on stderr
        main(["train", str(tiny_plan), "--time-limit", "-1"])
    assert e.value.code == 2


def test_bad_inputs(tiny_plan, tmp_path, capsys):
    with pytest.raises(ModelError, match="fold 9 does not exist"):
        train(tiny_plan, tmp_path / "m", fold=9, progress=False, validate=False)
    with pytest.raises(PlanError, match="no configuration 'nope'"):
        train(tiny_plan, tmp_path / "m", config_name="nope", progress=False, validate=False)
    with pytest.raises(PlanError, match="no preprocessed cases"):
        train(tiny_plan, tmp_path / "m", config_name="3d_fullres", progress=False, validate=False)
    assert main(["train", str(tmp_path / "nowhere"), "--fold", "0"]) == 2
    assert "plans.json: file not found" in capsys.readouterr().err


def test_checkpoint_of_another_plan_is_refused(tiny_plan, tmp_path):
    model = tmp_path / "m"
    train(tiny_plan, model, fold=0, epochs=1, iterations=1, progress=False, validate=False)
    record = json.loads((model / "model.json").read_text())
    record["plan_hash"] = "0000"
    (model / "model.json").write_text(json.dumps(record))
    with pytest.raises(ModelError, match="another plan"):
        train(tiny_plan, model, fold=0, epochs=1, iterations=1, progress=False, resume_training=True, validate=False)


def test_ddp_two_cpu_ranks_stay_in_sync(tiny_plan, tmp_path, free_port):
    out = tmp_path / "ddp"
    out.mkdir()
    mp.spawn(ddp_worker, args=(2, free_port, str(tiny_plan), str(out)), nprocs=2, join=True)
    w0 = torch.load(out / "rank0.pt", weights_only=True)["weights"]
    w1 = torch.load(out / "rank1.pt", weights_only=True)["weights"]
    saved = _weights(out / "fold_0" / "checkpoint_final.pt")
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert all(torch.equal(w0[k], saved[k]) for k in w0)  # rank 0 wrote what both hold


@pytest.mark.parametrize("kwargs", [{"epochs": 0}, {"iterations": -3}, {"epochs": 2.5}])
def test_non_positive_schedule_overrides_are_refused(tiny_plan, tmp_path, kwargs):
    """Regression: epochs=0 ran the plan's epochs and iterations=-3 ran none."""
    from volseg.training.run import train as train_only

    with pytest.raises(ValueError, match="must be a positive integer"):
        train_only(tiny_plan, tmp_path / "m", fold=0, progress=False, **kwargs)



@pytest.mark.parametrize("workers", [0, 2])
def test_killed_and_resumed_run_gives_the_uninterrupted_weights(tiny_plan, tmp_path, monkeypatch, workers):
    """A run stopped right after its second epoch's checkpoint and resumed ends bit-identical."""
    from volseg.training.run import train as train_only

    kw = dict(fold=0, epochs=3, iterations=2, progress=False, num_workers=workers, seed=11)
    whole = train_only(tiny_plan, tmp_path / "whole", **kw).fold_dir
    train_killed_after_second_epoch(monkeypatch, train_only, tiny_plan, tmp_path / "cut", **kw)
    resumed = train_only(tiny_plan, tmp_path / "cut", resume_training=True, **kw).fold_dir
    assert load_checkpoint(resumed / "checkpoint_latest.pt")["epoch"] == 3
    a, b = _weights(whole / "checkpoint_final.pt"), _weights(resumed / "checkpoint_final.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(x) for x in (resumed / "log.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in log] == [json.loads(x)["train_loss"]
                                                for x in (whole / "log.jsonl").read_text().splitlines()]


def test_single_case_dataset_trains_with_fold_all_only(tmp_path, capsys):
    """Regression: a one-case dataset was planned, then train failed with a ValueError traceback."""
    from synthetic import make_dataset

    data = make_dataset(tmp_path / "Dataset009_One", n_cases=1, shape=(16, 32, 32), spacing=(1.0, 1.0, 1.0),
                        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), n_labels=2)
    plan = tmp_path / "plan"
    assert main(["plan", str(data), "-o", str(plan), "--device", "cpu", "--cpu-gflop", "2", "-j", "1"]) == 0
    assert "--fold all" in capsys.readouterr().err
    assert main(["train", str(plan), "--fold", "0", "--epochs", "1", "--iters", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "cross-validation needs at least 2" in err and "Traceback" not in err
    assert not (plan / "models").exists()  # nothing written for a fold that cannot exist
    assert main(["train", str(plan), "--fold", "all", "--epochs", "1", "--iters", "1", "--no-progress"]) == 0
    assert (plan / "models" / "3d_cpu" / "fold_all" / "checkpoint_final.pt").is_file()


def test_missing_fold_leaves_no_model_folder(tiny_plan, tmp_path):
    """Regression: --fold 99 failed after model.json and friends were written."""
    with pytest.raises(ModelError, match="fold 99 does not exist"):
        train(tiny_plan, tmp_path / "m", fold=99, progress=False, validate=False)
    assert not (tmp_path / "m").exists()


def test_checkpoint_rule_and_score_smoothing_come_from_the_plan(tiny_plan, tmp_path):
    """The plan's score_ema_momentum and best_checkpoint decide what checkpoint_best.pt holds."""
    from volseg.planning.plans import load_plans, save_plans

    plans = load_plans(tiny_plan / "plans.json")
    tcfg = plans["configurations"]["3d_cpu"]["training"]
    assert (tcfg["amp"], tcfg["deterministic"], tcfg["score_ema_momentum"], tcfg["best_checkpoint"]) == (
        False, True, 0.9, "score_ema")
    plan = tmp_path / "plan"
    plan.mkdir()
    for item in tiny_plan.iterdir():
        (plan / item.name).symlink_to(item)
    (plan / "plans.json").unlink()
    tcfg.update(score_ema_momentum=0.0, best_checkpoint="score")
    save_plans(plans, plan / "plans.json")
    fold_dir = train(plan, tmp_path / "m", fold=0, epochs=3, iterations=2, progress=False, validate=False)
    log = [json.loads(x) for x in (fold_dir / "log.jsonl").read_text().splitlines()]
    assert all(r["score_ema"] == r["score"] for r in log)  # momentum 0: no smoothing
    assert load_checkpoint(fold_dir / "checkpoint_best.pt")["best_score"] == max(r["score"] for r in log)


def test_two_ranks_of_batch_b_take_the_step_of_one_process_with_batch_2b(tiny_plan, tmp_path, free_port):
    """DDP's mean gradient, with the batch Dice summed over ranks, is the gradient of the
    global batch: the first step's gradient matches one process holding both halves."""
    from ddp_step_worker import ddp_step_worker, fixed_batch, one_step

    torch.set_num_threads(1)
    _, _, _, data, target = fixed_batch(str(tiny_plan), 4)
    single = one_step(str(tiny_plan), data, target, ddp=False)
    mp.spawn(ddp_step_worker, args=(2, free_port, str(tiny_plan), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"step_rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert not torch.allclose(ranks[0]["loss"], ranks[1]["loss"])  # each rank saw other samples (its CE term)
    keys = [k for k in single if k != "loss"]
    reference = torch.cat([single[k].flatten() for k in keys])
    for rank in ranks:  # DDP leaves the averaged gradient on every rank
        grad = torch.cat([rank[k].flatten() for k in keys])
        error = float((grad - reference).norm() / reference.norm())
        assert error < 1e-5, error


def test_ranks_with_different_plans_stop_with_one_line(tiny_plan, tmp_path, free_port):
    import shutil

    from ddp_worker import ddp_mismatch_worker

    other = tmp_path / "other_plan"
    shutil.copytree(tiny_plan, other, ignore=shutil.ignore_patterns("models"))
    plans = json.loads((other / "plans.json").read_text())
    plans["configurations"]["3d_cpu"]["training"]["optimizer"]["lr"] = 0.02
    (other / "plans.json").write_text(json.dumps(plans))
    mp.spawn(ddp_mismatch_worker, args=(2, free_port, [str(tiny_plan), str(other)], str(tmp_path)), nprocs=2,
             join=True)
    for rank in (0, 1):
        message = (tmp_path / f"rank{rank}.txt").read_text()
        assert "the plan differs between rank 0 and rank(s) 1" in message and "\n" not in message
    assert not (tmp_path / "model0" / "fold_0" / "checkpoint_final.pt").exists()


def test_a_run_that_learned_nothing_says_so_and_exits_non_zero(tiny_plan, tmp_path, monkeypatch, capsys):
    from volseg.training import trainer
    from volseg.training.progress import learned_nothing

    real = trainer.validate

    def zero_score(parts, sched, ctx):
        val_loss, _, extra = real(parts, sched, ctx)
        return val_loss, 0.0, extra

    monkeypatch.setattr(trainer, "validate", zero_score)
    model = tmp_path / "m"
    assert main(["train", str(tiny_plan), "-o", str(model), "--fold", "0", "--epochs", "2", "--iters", "1",
                 "--no-progress", "--no-validation"]) == 3
    err = capsys.readouterr().err
    assert "learned nothing" in err and "stayed 0.000 in all 2 epochs" in err
    assert (model / "fold_0" / "checkpoint_final.pt").is_file()  # kept
    monkeypatch.setattr(trainer, "validate", real)
    assert learned_nothing(model / "nowhere") is None  # no log: nothing to tell
    log = model / "fold_0" / "log.jsonl"
    records = [json.loads(x) for x in log.read_text().splitlines()]
    records[-1]["score"] = 0.01
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert learned_nothing(model / "fold_0") is None
