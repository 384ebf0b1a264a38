"""The pipeline from Python: the same steps as the command line, one call each.

Example:
    >>> import volseg
    >>> volseg.demo_data("ms", "data/ms_demo", num_cases=12)  # doctest: +SKIP
    >>> plans = volseg.plan("data/ms_demo", "runs/ms_demo", device="cpu")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path


def demo_data(kind: str, out_dir: str | os.PathLike, num_cases: int = 12, seed: int = 0) -> Path:
    """Write the ``lung`` or ``ms`` demo dataset to ``out_dir`` (see ``volseg demo-data``)."""
    from volseg.demo import generate_lung_dataset, generate_ms_dataset

    if kind == "lung":
        return generate_lung_dataset(out_dir, num_cases=num_cases, seed=seed)
    if kind == "ms":
        return generate_ms_dataset(out_dir, num_cases=num_cases, seed=seed)
    raise ValueError(f"unknown demo dataset {kind!r}; expected 'lung' or 'ms'")


def plan(dataset_dir: str | os.PathLike, out_dir: str | os.PathLike, **kwargs) -> dict:
    """Fingerprint, plan and preprocess (see :func:`volseg.planning.run.plan_and_preprocess`)."""
    from volseg.planning.run import plan_and_preprocess

    return plan_and_preprocess(dataset_dir, out_dir, **kwargs)


def train(plan_dir: str | os.PathLike, model_dir: str | os.PathLike | None = None, fold: int | str = 0,
          **kwargs) -> Path:
    """Train one fold, then predict its held-out cases and fit the calibrators (see
    :func:`volseg.workflow.train_fold`); returns the fold's folder."""
    from volseg.workflow import train_fold

    return train_fold(plan_dir, model_dir, fold=fold, **kwargs)


def predict(inputs: str | os.PathLike | list, out_dir: str | os.PathLike, model_dir: str | os.PathLike,
            folds: list[str] | None = None, checkpoint: str = "final", resume: bool = False,
            progress: bool = True, **options) -> dict:
    """Predict every case of ``inputs`` (folders or files) with a model folder.

    ``options`` are the fields of :class:`volseg.inference.predictor.PredictOptions`
    (``tta``, ``save_probabilities``, ``save_uncertainty``, ``device``, ...).

    Returns:
        The prediction summary (also written to ``out_dir/summary.json``).
    """
    from volseg.inference.predictor import PredictOptions, predict_folder, resolve_device

    from volseg.model import load_model

    opts = PredictOptions(**options)
    model = load_model(model_dir, folds, checkpoint, resolve_device(opts.device))
    inputs = inputs if isinstance(inputs, list) else [inputs]
    return predict_folder(inputs, out_dir, model, opts, resume=resume, progress=progress)


def evaluate(pred_dir: str | os.PathLike, ref_dir: str | os.PathLike, out_dir: str | os.PathLike,
             **kwargs) -> dict:
    """Score predictions against references (see :func:`volseg.evaluation.evaluate_folders`)."""
    from volseg.evaluation import evaluate_folders

    return evaluate_folders(pred_dir, ref_dir, out_dir, **kwargs)


def calibrate(model_dir: str | os.PathLike, risk: str, alpha: float, **kwargs) -> dict:
    """Calibrate a threshold with a finite-sample guarantee and write ``calibration.json``
    (see :func:`volseg.conformal.calibrate.calibrate_model`); ``predict(..., calibrated=True)`` applies it."""
    from volseg.conformal.calibrate import calibrate_model

    return calibrate_model(model_dir, risk, alpha, **kwargs)
