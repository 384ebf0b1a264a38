import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/synthetic.py
os.environ.setdefault("OMP_NUM_THREADS", "2")

from synthetic import make_dataset  # noqa: E402


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a DDP or torchrun rendezvous)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_plan(tmp_path_factory):
    """A planned and preprocessed 4-case dataset whose 3d_cpu configuration trains in seconds."""
    from volseg.planning.plans import save_plans
    from volseg.planning.run import plan_and_preprocess

    root = tmp_path_factory.mktemp("train")
    data = make_dataset(root / "Dataset002_Tiny", n_cases=4, shape=(16, 32, 32), spacing=(1.0, 1.0, 1.0),
                        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), n_labels=2)
    out = root / "plan"
    plans = plan_and_preprocess(data, out, device="cpu", num_workers=1, progress=False, cpu_gflop=2.0)
    cfg = plans["configurations"]["3d_cpu"]
    cfg["training"].update(epochs=2, iterations_per_epoch=3, val_iterations=1, num_workers=0)
    cfg["batch_size"] = 2
    save_plans(plans, out / "plans.json")
    return out


@pytest.fixture(scope="session")
def tiny_model(tiny_plan, tmp_path_factory):
    """A model folder with folds 0 and 1 of the tiny plan, trained for a few iterations."""
    from volseg.workflow import train_fold as train

    model = tmp_path_factory.mktemp("model") / "m"
    for fold in (0, 1):
        train(tiny_plan, model, fold=fold, epochs=2, iterations=4, progress=False, validate=False)
    return model
