"""Plan → training parts: every setting comes from the plan, none from a fallback of build.py."""

import copy

import pytest
import torch

from volseg.planning.plans import load_plans
from volseg.training.build import build_optimizer, build_parts
from volseg.training.distributed import DistContext


@pytest.fixture
def plan(tiny_plan):
    plans = load_plans(tiny_plan / "plans.json")
    return plans, plans["configurations"]["3d_cpu"]


def test_sgd_takes_every_setting_from_the_plan(plan):
    _, cfg = plan
    cfg = copy.deepcopy(cfg)
    cfg["training"]["optimizer"] = {"name": "sgd", "lr": 0.02, "momentum": 0.9, "nesterov": False,
                                    "weight_decay": 1e-3}
    group = build_optimizer(cfg, torch.nn.Conv3d(1, 2, 3)).param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (0.02, 0.9, False, 1e-3)
    cfg["training"]["optimizer"] = {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05}
    assert build_optimizer(cfg, torch.nn.Conv3d(1, 2, 3)).param_groups[0]["weight_decay"] == 0.05


@pytest.mark.parametrize("optimizer, missing", [({"name": "sgd", "lr": 0.01, "nesterov": True, "weight_decay": 3e-5},
                                                 "momentum"),
                                                ({"name": "sgd", "lr": 0.01, "momentum": 0.99, "nesterov": True},
                                                 "weight_decay"),
                                                ({"name": "adamw", "lr": 1e-3}, "weight_decay")])
def test_an_optimizer_setting_missing_from_the_plan_is_not_made_up(plan, optimizer, missing):
    _, cfg = plan
    cfg = copy.deepcopy(cfg)
    cfg["training"]["optimizer"] = optimizer
    with pytest.raises(KeyError, match=missing):
        build_optimizer(cfg, torch.nn.Conv3d(1, 2, 3))


def test_foreground_oversampling_comes_from_the_plan(plan, tiny_plan, monkeypatch):
    import volseg.data

    plans, cfg = plan
    cfg["training"]["foreground_oversampling"] = 0.7
    seen = []

    class _Loader:
        wait_time = 0.0

        def __iter__(self):
            return self

        def __next__(self):
            raise StopIteration

        def close(self):
            pass

    def fake_loader(cases, patch_size, batch_size, **kw):
        seen.append(kw["foreground_oversampling"])
        return _Loader()

    monkeypatch.setattr(volseg.data, "make_loader", fake_loader)
    monkeypatch.setattr(volseg.data, "load_cases", lambda *a, **k: [])
    parts = build_parts(plans, cfg, tiny_plan / "preprocessed" / "3d_cpu", ["a"], ["b"], DistContext(),
                        num_workers=0, seed=0)
    parts.close()
    assert seen == [0.7, 0.7]  # training and validation loaders

    del cfg["training"]["foreground_oversampling"]
    with pytest.raises(KeyError, match="foreground_oversampling"):
        build_parts(plans, cfg, tiny_plan / "preprocessed" / "3d_cpu", ["a"], ["b"], DistContext(),
                    num_workers=0, seed=0)


def test_train_uses_the_plans_worker_count(tiny_plan, tmp_path, monkeypatch):
    import volseg.training.build
    from volseg.training.run import train

    plans = load_plans(tiny_plan / "plans.json")
    seen = {}

    class _Stop(Exception):
        pass

    def fake_build_parts(*args, num_workers, seed):
        seen["num_workers"] = num_workers
        raise _Stop

    monkeypatch.setattr(volseg.training.build, "build_parts", fake_build_parts)
    with pytest.raises(_Stop):
        train(tiny_plan, tmp_path / "m", fold=0, progress=False)
    assert seen["num_workers"] == plans["configurations"]["3d_cpu"]["training"]["num_workers"]
    with pytest.raises(_Stop):
        train(tiny_plan, tmp_path / "n", fold=0, progress=False, num_workers=3)
    assert seen["num_workers"] == 3
