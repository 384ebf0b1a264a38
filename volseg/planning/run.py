"""``volseg plan`` as a library call: fingerprint → plans.json → preprocessed cases."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from volseg.errors import PlanError
from volseg.fingerprint import compute_fingerprint, load_fingerprint, write_fingerprint
from volseg.io.dataset import load_dataset
from volseg.planning.planner import plan_experiment
from volseg.planning.plans import load_plans, save_plans

log = logging.getLogger(__name__)


def default_device() -> str:
    """"cuda" when a CUDA device is visible, else "cpu"."""
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except Exception:  # torch without a working CUDA runtime
        return "cpu"


def plan_and_preprocess(dataset_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                        memory_gb: float = 8.0, device: str = "auto", cpu_gflop: float = 100.0,
                        configurations: list[str] | None = None, preprocess: bool = True,
                        num_workers: int = 2, overwrite_plans: bool = False, progress: bool = True) -> dict:
    """Fingerprint a dataset, plan it, and preprocess its training cases.

    Args:
        dataset_dir: nnU-Net v2 raw dataset folder (see :mod:`volseg.io.dataset`).
        out_dir: Where ``fingerprint.json``, ``plans.json`` and ``preprocessed/`` go.
        memory_gb: GPU memory budget of the GPU configurations.
        device: "cuda", "cpu" or "auto" (what this machine has): picks the default configuration.
        cpu_gflop: Convolution GFLOP per iteration of the ``3d_cpu`` configuration.
        configurations: Configurations to preprocess (default: the default configuration).
        preprocess: Preprocess after planning.
        num_workers: Worker processes.
        overwrite_plans: Re-plan even when ``plans.json`` exists (a hand-edited plan is kept otherwise).

    Returns:
        The plans.

    Example:
        >>> plans = plan_and_preprocess("data/ms_demo", "runs/ms_demo", device="cpu")  # doctest: +SKIP
    """
    from volseg.io.atomic import check_output_dir, removed_if_left_empty

    out_dir = check_output_dir(out_dir, [dataset_dir])
    dataset = load_dataset(dataset_dir)
    with removed_if_left_empty(out_dir):
        return _plan_and_preprocess(dataset, out_dir, memory_gb=memory_gb, device=device, cpu_gflop=cpu_gflop,
                                    configurations=configurations, preprocess=preprocess, num_workers=num_workers,
                                    overwrite_plans=overwrite_plans, progress=progress)


def _plan_and_preprocess(dataset, out_dir: Path, *, memory_gb: float, device: str, cpu_gflop: float,
                         configurations: list[str] | None, preprocess: bool, num_workers: int,
                         overwrite_plans: bool, progress: bool) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    plans_path, fp_path = out_dir / "plans.json", out_dir / "fingerprint.json"
    if plans_path.is_file() and not overwrite_plans:
        log.info("using existing %s (pass --overwrite-plans to re-plan)", plans_path)
        plans = load_plans(plans_path)
    else:
        if fp_path.is_file() and not overwrite_plans:
            fingerprint = load_fingerprint(fp_path)
            if fingerprint["dataset"]["num_cases"] != len(dataset.cases):
                fingerprint = None
        else:
            fingerprint = None
        if fingerprint is None:
            fingerprint = compute_fingerprint(dataset, num_workers=num_workers, progress=progress)
            write_fingerprint(fingerprint, fp_path)
        device = default_device() if device == "auto" else device
        plans = plan_experiment(fingerprint, memory_gb=memory_gb, device=device, cpu_gflop=cpu_gflop)
        save_plans(plans, plans_path)
    if preprocess:
        from volseg.preprocessing.run import preprocess_dataset

        for name in configurations or [plans["default_configuration"]]:
            if name not in plans["configurations"]:
                raise PlanError(plans_path, f"no configuration {name!r}; the plan has {sorted(plans['configurations'])}")
            counts = preprocess_dataset(dataset, plans, name, out_dir / "preprocessed" / name,
                                        num_workers=num_workers, progress=progress)
            log.info("preprocessed %s: %d cases written, %d up to date", name, counts["processed"], counts["skipped"])
    return plans
