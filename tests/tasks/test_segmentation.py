"""The segmentation task behind the task seam behaves exactly as the plain composition of its parts.

Regression guard for the seam: training through ``TrainParts(task=...)`` must give the same
weights, bit for bit, as the direct loop over the plan-built network, loss and loader; and
the sliding-window engine with the dense aggregator must give the same labels as the direct
average-then-accumulate stitching, in full and in slab mode.
"""

import itertools

import pytest
import torch

from volseg.data import load_cases, make_loader
from volseg.kernels.accumulate import accumulate_torch
from volseg.kernels.finalize import finalize
from volseg.kernels.gaussian import gaussian_1d, normalizer_1d, patch_weight, tile_starts
from volseg.networks import deep_supervision_scales, from_plans
from volseg.planning.plans import load_plans
from volseg.tasks import SegmentationTask, list_tasks, make_task
from volseg.training.build import build_optimizer
from volseg.training.losses import build_loss
from volseg.training.run import seed_everything
from volseg.training.schedule import learning_rate


def _plain_training(plan_dir, train_ids, seed: int, iterations: int) -> dict:
    """One epoch of the loop written out by hand from the plan (no task object)."""
    plans = load_plans(plan_dir / "plans.json")
    cfg = plans["configurations"]["3d_cpu"]
    seed_everything(seed, True)
    net = from_plans(cfg["network"], len(plans["dataset"]["channel_names"]), plans["outputs"]["num_outputs"])
    opt = build_optimizer(cfg, net)
    scales = [list(s) for s in deep_supervision_scales(cfg["network"]["strides"])]
    loss = build_loss(cfg["training"]["loss"], mode="softmax", deep_supervision=True)
    loader = make_loader(load_cases(plan_dir / "preprocessed" / "3d_cpu", train_ids), cfg["patch_size"],
                         cfg["batch_size"], cfg["augmentation"], scales, training=True, num_workers=0, seed=seed,
                         foreground_oversampling=cfg["training"]["foreground_oversampling"])
    tcfg = cfg["training"]
    net.train()
    for it in range(iterations):
        for group in opt.param_groups:
            group["lr"] = learning_rate(tcfg["lr_schedule"], tcfg["optimizer"]["lr"], it, iterations)
        batch = next(loader)
        opt.zero_grad(set_to_none=True)
        loss(net(batch["data"]), batch["target"]).backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), tcfg["grad_clip"])
        opt.step()
    loader.close()
    return net.state_dict()


def test_training_through_the_task_equals_the_plain_loop(tiny_plan, tmp_path):
    from volseg.model import load_checkpoint
    from volseg.training.run import train

    trained = train(tiny_plan, tmp_path / "m", fold=0, epochs=1, iterations=3, progress=False, seed=5,
                    num_workers=0)
    got = load_checkpoint(trained.fold_dir / "checkpoint_final.pt")["network"]
    import json

    splits = json.loads((tmp_path / "m" / "splits.json").read_text())
    want = _plain_training(tiny_plan, splits[0]["train"], seed=5, iterations=3)
    assert sorted(got) == sorted(want)
    differ = [k for k in want if not torch.equal(got[k], want[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[0]}"


def _plain_stitching(nets, image, patch, k, mirror_axes, tile_batch, sigma=0.125, step=0.5):
    """Average the members' logits per batch, weight, accumulate, finalize: the dense reference."""
    shape = image.shape[1:]
    starts = [tile_starts(s, p, step) for s, p in zip(shape, patch)]
    w = [gaussian_1d(p, sigma, image.device) for p in patch]
    weight = patch_weight(*w)
    acc = torch.zeros((k, *shape))
    axes = sorted(mirror_axes)
    mirrors = [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]
    positions = [(z, y, x) for z in starts[0] for y in starts[1] for x in starts[2]]
    pz, py, px = patch
    with torch.no_grad():
        for i in range(0, len(positions), tile_batch):
            chunk = positions[i:i + tile_batch]
            batch = torch.stack([image[:, z:z + pz, y:y + py, x:x + px] for z, y, x in chunk])
            total = None
            for net in nets:
                for m in mirrors:
                    dims = [a + 2 for a in m]
                    out = net(torch.flip(batch, dims) if dims else batch)
                    out = torch.flip(out, dims) if dims else out
                    total = out.float() if total is None else total + out.float()
            accumulate_torch(acc, total / (len(nets) * len(mirrors)), chunk, weight)
    norms = [normalizer_1d(s, st, wi) for s, st, wi in zip(shape, starts, w)]
    return finalize(acc, norms[0], norms[1], norms[2], "softmax", False, False, "torch").labels


@pytest.mark.parametrize("slab", [False, True])
def test_engine_with_dense_aggregator_equals_plain_stitching(slab):
    from volseg.inference.sliding_window import predict_sliding_window

    torch.manual_seed(0)
    nets = [torch.nn.Sequential(torch.nn.Conv3d(2, 6, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv3d(6, 4, 3, padding=1)).eval() for _ in range(2)]
    image = torch.randn(2, 30, 27, 33)
    got = predict_sliding_window(nets, image, (12, 16, 16), 4, mirror_axes=(0, 2), tile_batch=3, slab=slab)
    want = _plain_stitching(nets, image, (12, 16, 16), 4, (0, 2), 3)
    assert torch.equal(got.labels, want)


def test_plans_name_the_segmentation_task(tiny_plan):
    plans = load_plans(tiny_plan / "plans.json")
    assert plans["task"] == "segmentation" and "segmentation" in list_tasks()
    assert isinstance(make_task(plans), SegmentationTask)


def test_unknown_task_in_a_plan_is_a_one_line_error(tiny_plan, tmp_path):
    import json

    from volseg.errors import PlanError

    plans = json.loads((tiny_plan / "plans.json").read_text())
    plans["task"] = "segmentaton"
    (tmp_path / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(PlanError, match="task 'segmentaton' is not a registered task"):
        load_plans(tmp_path / "plans.json")


def test_segmentation_score_is_the_mean_pseudo_dice_of_classes_present():
    task = SegmentationTask({"outputs": {"mode": "softmax", "num_outputs": 3, "class_values": [0, 1, 2]},
                             "dataset": {"channel_names": {"0": "MR"}}})
    logits = torch.zeros(1, 3, 2, 2, 2)
    logits[:, 1] = 1.0  # predicts class 1 everywhere
    target = torch.ones(1, 1, 2, 2, 2, dtype=torch.int16)
    stats = task.batch_stats([logits], [target])
    score, extra = task.score(stats + stats)  # statistics are summable
    assert score == 1.0 and extra["pseudo_dice"][0] == 1.0 and extra["pseudo_dice"][1] != extra["pseudo_dice"][1]
    terms = task.loss({"network": {"strides": [[1, 1, 1]], "deep_supervision": False},
                       "training": {"loss": {"name": "dice_ce"}}})(logits, target)
    assert list(terms) == ["dice_ce"] and terms["dice_ce"].ndim == 0
