"""Cross-validation: train a fold, predict its held-out cases, fit the task's calibrators.

Sits above training and inference (which never import each other): after a fold is
trained, the shift check's feature reference is fitted on its training cases
(:func:`volseg.shift.features.fit_fold_features`), and its held-out cases are predicted from the raw images exactly as ``volseg predict``
would, without post-processing, into ``fold_K/validation/`` and scored with
:func:`volseg.evaluation.evaluate_folders`. Each of the task's calibrators (for
segmentation: the connected-component rules) is then fitted on the validation folders of
every fold validated so far and written to ``MODEL/<name>.json``, which ``predict`` applies,
and the held-out cases' shift scores become ``MODEL/shift.json``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from volseg.io.atomic import write_json
from volseg.model import dataset_root, fold_dir

log = logging.getLogger(__name__)


def train_fold(plan_dir: str | os.PathLike, model_dir: str | os.PathLike | None = None, fold: int | str = 0,
               validate: bool = True, progress: bool = True, **train_options) -> Path:
    """Train one fold (:func:`volseg.training.run.train`), then validate it and fit the calibrators.

    Args:
        plan_dir, model_dir, fold: As for :func:`volseg.training.run.train`.
        validate: Predict and score the held-out cases and fit the calibrators (main rank only;
            skipped for ``fold="all"``, which has no held-out cases).
        progress: Progress bars.
        **train_options: The other arguments of :func:`volseg.training.run.train`.

    Returns:
        The fold's folder inside the model folder.

    Example:
        >>> train_fold("runs/ms_demo", fold=0, epochs=5)  # doctest: +SKIP
    """
    from volseg.training.run import train

    trained = train(plan_dir, model_dir, fold=fold, progress=progress, **train_options)
    if trained.is_main:  # the shift check's feature reference, before the held-out cases are scored with it
        from volseg.shift.features import fit_fold_features

        fit_fold_features(trained.model_dir, plan_dir, trained.fold, device=trained.device)
    if validate and trained.val_ids and trained.is_main:
        validate_fold(trained.model_dir, trained.fold, trained.val_ids,
                      device="cuda" if trained.device == "cuda" else "cpu", progress=progress)
        calibrate(trained.model_dir)
    return trained.fold_dir


def validate_fold(model_dir: str | Path, fold: str, val_ids: list[str], device: str = "auto",
                  progress: bool = True) -> dict | None:
    """Predict and score the held-out cases of ``fold``; returns the evaluation summary (None when skipped)."""
    from volseg.inference.predictor import PredictOptions, predict_folder, resolve_device
    from volseg.model import load_model

    model_dir = Path(model_dir)
    root = dataset_root(model_dir)
    if root is None or not val_ids:
        log.warning("skipping the sliding-window validation of fold %s: dataset folder not found", fold)
        return None
    out = fold_dir(model_dir, fold) / "validation"
    model = load_model(model_dir, [fold], "final", resolve_device(device))
    ending = model.plans["dataset"].get("file_ending", ".nii.gz")
    images = [p for c in val_ids for p in sorted((root / "imagesTr").glob(f"{c}_[0-9][0-9][0-9][0-9]{ending}"))]
    options = PredictOptions(device=device, postprocess=False, **model.task.validation_options())
    predict_folder(images, out, model, options, progress=progress)
    summary = model.task.evaluate_validation(out, root, list(val_ids))
    log.info("fold %s validation: %s", fold, {k: summary[k] for k in ("foreground_mean", "cpm") if k in summary})
    return summary


def calibrate(model_dir: str | Path) -> dict[str, dict]:
    """Fit every calibrator of the model's task on the validated folds; write ``MODEL/<name>.json``.

    Returns:
        Calibrator name → fitted parameters (calibrators with nothing to fit are left out).
    """
    from volseg.planning.plans import load_plans
    from volseg.tasks import make_task

    model_dir = Path(model_dir)
    task = make_task(load_plans(model_dir / "plans.json"))
    folders = sorted(p for p in model_dir.glob("fold_*/validation") if (p / "reference").is_dir())
    fitted = {}
    for calibrator in task.calibrators():
        params = calibrator.fit(folders)
        if params is None:
            continue
        write_json(model_dir / f"{calibrator.name}.json", params)
        fitted[calibrator.name] = params
        shown = params.get("rules", {k: v for k, v in params.items() if k not in ("table", "grid")})
        log.info("%s fitted on %d validated fold(s): %s", calibrator.name, len(folders), shown)
    from volseg.shift.check import fit_shift_calibration

    shift = fit_shift_calibration(model_dir)
    if shift is not None:
        fitted["shift"] = shift
    return fitted
