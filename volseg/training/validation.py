"""Full sliding-window validation of a trained fold, and the post-processing chosen from it.

After a fold is trained, its held-out cases are predicted from the raw images (exactly as
``volseg predict`` would, without post-processing) into ``fold_K/validation/`` and scored
with :func:`volseg.evaluation.evaluate_folders`. The connected-component rules are then
chosen on the validation predictions of every fold validated so far and written to
``MODEL/postprocessing.json``, which ``predict`` applies.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np

from volseg.io.atomic import write_json
from volseg.io.nifti import read_image
from volseg.training.model_folder import fold_dir

log = logging.getLogger(__name__)


def dataset_root(model_dir: Path) -> Path | None:
    """The dataset folder the model was planned on (from the copied fingerprint), if it still exists."""
    fp = model_dir / "fingerprint.json"
    if not fp.is_file():
        return None
    root = Path(json.loads(fp.read_text())["dataset"]["root"])
    return root if (root / "imagesTr").is_dir() else None


def write_reference(label_file: Path, dst: Path, instance_file: Path | None = None) -> None:
    """Copy a reference label map to ``dst``; an instance map (with its ``CASE.json``) becomes its class map."""
    if instance_file is None:
        shutil.copyfile(label_file, dst)
        return
    from volseg.fingerprint.case import semantic_label
    from volseg.io.dataset import read_instances
    from volseg.io.nifti import write_image

    label, geometry = read_image(label_file)
    write_image(dst, semantic_label(label, read_instances(instance_file)).astype(np.uint8), geometry)


def validate_fold(model_dir: str | Path, fold: str, val_ids: list[str], device: str = "auto",
                  progress: bool = True) -> dict | None:
    """Predict and score the held-out cases of ``fold``; returns the evaluation summary (None when skipped)."""
    from volseg.evaluation import evaluate_folders
    from volseg.inference.model import load_model
    from volseg.inference.predictor import PredictOptions, predict_folder, resolve_device

    model_dir = Path(model_dir)
    root = dataset_root(model_dir)
    if root is None or not val_ids:
        log.warning("skipping the sliding-window validation of fold %s: dataset folder not found", fold)
        return None
    out = fold_dir(model_dir, fold) / "validation"
    model = load_model(model_dir, [fold], "final", resolve_device(device))
    ending = model.plans["dataset"].get("file_ending", ".nii.gz")
    images = [p for c in val_ids for p in sorted((root / "imagesTr").glob(f"{c}_[0-9][0-9][0-9][0-9]{ending}"))]
    predict_folder(images, out, model, PredictOptions(device=device, postprocess=False), progress=progress)
    ref = out / "reference"
    ref.mkdir(exist_ok=True)
    for c in val_ids:
        src, dst = root / "labelsTr" / f"{c}{ending}", ref / f"{c}{ending}"
        if not dst.exists():
            write_reference(src, dst, root / "labelsTr" / f"{c}.json"
                            if model.plans["dataset"].get("instance_labels") else None)
    summary = evaluate_folders(out, ref, out / "evaluation", dataset_dir=root, num_workers=1,
                               plots=True, worst=2)
    log.info("fold %s validation: foreground mean Dice %s", fold, summary.get("foreground_mean"))
    return summary


def choose_postprocessing(model_dir: str | Path) -> dict | None:
    """Choose connected-component rules on every validated fold and write ``postprocessing.json``."""
    from volseg.postprocessing.choose import choose_rules

    model_dir = Path(model_dir)
    plans = json.loads((model_dir / "plans.json").read_text())
    if plans["outputs"]["mode"] != "softmax":
        return None
    ending = plans["dataset"].get("file_ending", ".nii.gz")
    cases = []
    for ref in sorted(model_dir.glob(f"fold_*/validation/reference/*{ending}")):
        pred = ref.parent.parent / ref.name
        if pred.is_file():
            p, g = read_image(pred)
            r, _ = read_image(ref)
            cases.append((p.astype(np.int16), r.astype(np.int16), g.spacing))
    if not cases:
        return None
    values = [v for v in plans["outputs"]["class_values"] if v != 0]
    chosen = choose_rules(cases, values)
    chosen["num_cases"] = len(cases)
    write_json(model_dir / "postprocessing.json", chosen)
    log.info("post-processing rules chosen on %d validation cases: %s", len(cases), chosen["rules"] or "none")
    return chosen
