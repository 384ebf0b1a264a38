"""Prediction of whole cases: preprocess → sliding window → back to the input grid → post-process."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from volseg.inference.model import LoadedModel
from volseg.inference.restore import resample_and_finalize, uncrop
from volseg.io.nifti import Geometry
from volseg.preprocessing.case import preprocess_image

log = logging.getLogger(__name__)


@dataclass
class PredictOptions:
    """How to predict. ``None`` fields take the plan's ``inference`` settings."""

    step_fraction: float | None = None
    tta: bool = True
    save_probabilities: bool = False
    save_uncertainty: bool = False
    device: str = "auto"
    backend: str = "auto"
    memory_budget_gb: float | None = None
    postprocess: bool = True


@dataclass
class CasePrediction:
    """One case on its input grid: labels (Z, Y, X) uint8; optional fp16 probabilities
    (K, Z, Y, X) and entropy (Z, Y, X, nats); timings in seconds."""

    labels: np.ndarray
    probabilities: np.ndarray | None = None
    entropy: np.ndarray | None = None
    seconds: dict = field(default_factory=dict)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but no CUDA device is available")
    return torch.device(device)


def _label_values(plans: dict) -> np.ndarray:
    """Output channel → label value (softmax), or the label painted by each region (sigmoid)."""
    out = plans["outputs"]
    if out["mode"] == "softmax":
        values = list(range(out["num_outputs"]))
        return np.asarray(values, dtype=np.uint8)
    return np.asarray([max(v) for v in out["regions"].values()], dtype=np.uint8)


def _regions_to_labels(probs: torch.Tensor, plans: dict) -> torch.Tensor:
    """Sigmoid mode: paint regions from the largest union to the smallest (nested regions)."""
    regions = list(plans["outputs"]["regions"].values())
    order = sorted(range(len(regions)), key=lambda r: -len(regions[r]))
    labels = torch.zeros(probs.shape[1:], dtype=torch.uint8, device=probs.device)
    for r in order:
        labels[probs[r] > 0.5] = max(regions[r])
    return labels


def prepare(model: LoadedModel, images: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, dict, float]:
    """Preprocess a (C, Z, Y, X) image for ``model``: (data, properties, seconds)."""
    t0 = time.perf_counter()
    data, props = preprocess_image(images, geometry, model.plans, model.config)
    return data, props, time.perf_counter() - t0


def predict_images(model: LoadedModel, images: np.ndarray, geometry: Geometry, options: PredictOptions,
                   device: torch.device, prepared: tuple[np.ndarray, dict, float] | None = None) -> CasePrediction:
    """Predict one case given as a (C, Z, Y, X) float32 image on ``geometry``'s grid.

    Args:
        model: A loaded model folder (one network per fold; logits are averaged).
        images: (C, Z, Y, X) float32, channels in the model's order.
        geometry: Geometry of the input grid; the result has exactly this grid.
        options: TTA, step, outputs, device and backend.
        device: Where the networks run.
        prepared: The output of :func:`prepare` for these images, when already computed.

    Returns:
        Labels (and optional maps) on the input grid, post-processed with the model's rules.
    """
    from volseg.inference.sliding_window import predict_sliding_window

    plans, cfg = model.plans, model.config
    inf = cfg["inference"]
    data, props, prep_seconds = prepared or prepare(model, images, geometry)
    t1 = time.perf_counter()
    mode = plans["outputs"]["mode"]
    same_grid = list(props["shape_after_resampling"]) == list(props["shape_after_crop"])
    want_probs = options.save_probabilities or mode == "sigmoid"
    budget = None if options.memory_budget_gb is None else int(options.memory_budget_gb * 1e9)
    sw = predict_sliding_window(
        model.networks, torch.from_numpy(data), cfg["patch_size"], plans["outputs"]["num_outputs"],
        step_fraction=options.step_fraction or inf["step_fraction"], sigma_scale=inf["gaussian_sigma_scale"],
        mirror_axes=inf["mirror_axes"] if options.tta else (), tile_batch=inf.get("tile_batch", 2), device=device,
        backend=options.backend, mode=mode, return_probabilities=want_probs and same_grid,
        return_uncertainty=options.save_uncertainty and same_grid, return_logits=not same_grid,
        memory_budget_bytes=budget)
    t2 = time.perf_counter()
    if same_grid:
        labels, probs, entropy = sw.labels, sw.probabilities, sw.entropy
    else:
        fin = resample_and_finalize(sw.logits, props["shape_after_crop"], mode=mode, return_probabilities=want_probs,
                                    return_uncertainty=options.save_uncertainty, backend=options.backend)
        labels, probs, entropy = fin.labels, fin.probabilities, fin.entropy
    if mode == "sigmoid":
        labels = _regions_to_labels(probs.float(), plans)
    result = _to_input_grid(labels, probs if options.save_probabilities else None, entropy, props, geometry, plans)
    if options.postprocess and model.postprocessing:
        from volseg.postprocessing import apply_rules

        result.labels = apply_rules(result.labels, model.postprocessing["rules"], geometry.spacing)
    t3 = time.perf_counter()
    result.seconds = {"preprocess": prep_seconds, "network_and_stitching": t2 - t1, "restore": t3 - t2,
                      "network": float(sw.timings.get("network", float("nan")))}
    return result


def _to_input_grid(labels, probs, entropy, props: dict, geometry: Geometry, plans: dict) -> CasePrediction:
    box, full = props["crop_bbox"], geometry.shape
    lab = labels.cpu().numpy().astype(np.uint8)
    if plans["outputs"]["mode"] == "softmax":
        lab = _label_values(plans)[lab]
    out = CasePrediction(uncrop(lab, box, full, 0))
    if probs is not None:
        p = probs.cpu().numpy().astype(np.float16)
        filled = np.zeros((p.shape[0], *full), np.float16)
        if plans["outputs"]["mode"] == "softmax":
            filled[0] = 1.0  # outside the cropped region: background for certain
        sl = tuple(slice(a, b) for a, b in box)
        filled[(slice(None), *sl)] = p
        out.probabilities = filled
    if entropy is not None:
        out.entropy = uncrop(entropy.cpu().numpy().astype(np.float16), box, full, 0)
    return out


def _read_and_prepare(model: LoadedModel, case) -> tuple:
    from volseg.inference.cases import read_input_case

    images, geometry = read_input_case(case, model.num_channels)
    return images, geometry, prepare(model, images, geometry)


def predict_folder(inputs: list, out_dir: str | Path, model: LoadedModel, options: PredictOptions,
                   resume: bool = False, progress: bool = True) -> dict:
    """Predict every case found in ``inputs`` into ``out_dir``.

    A bad case (unreadable, wrong channel count, channels with different geometry) is
    reported and skipped; the others complete. The next case is read and preprocessed in
    a background thread while the current one runs, and outputs are written by another.

    Returns:
        The summary also written to ``out_dir/summary.json``: per case ``status`` ("done",
        "skipped" or "failed"), ``error`` and timings.
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    from volseg.errors import VolsegError
    from volseg.inference.cases import find_input_cases
    from volseg.inference.export import BackgroundExporter
    from volseg.io.atomic import write_json

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(options.device)
    ending = model.plans["dataset"].get("file_ending", ".nii.gz")
    cases = find_input_cases(inputs, model.num_channels)
    todo = [c for c in cases if not (resume and (out_dir / f"{c.case_id}{ending}").is_file())]
    summary = {"model": str(model.root), "configuration": model.config_name, "folds": model.folds,
               "device": str(device), "tta": options.tta, "cases": {}}
    for c in cases:
        if c not in todo:
            summary["cases"][c.case_id] = {"status": "skipped", "reason": "already predicted (--resume)"}
    exporter = BackgroundExporter()
    reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="volseg-read")
    bar = tqdm(total=len(todo), desc="predict", unit="case", disable=not progress, leave=False)
    try:
        nxt = reader.submit(_read_and_prepare, model, todo[0]) if todo else None
        for i, case in enumerate(todo):
            fut, nxt = nxt, (reader.submit(_read_and_prepare, model, todo[i + 1]) if i + 1 < len(todo) else None)
            t0 = time.perf_counter()
            try:
                images, geometry, prepared = fut.result()
                pred = predict_images(model, images, geometry, options, device, prepared)
                exporter.submit(out_dir, case.case_id, ending, geometry, pred.labels, pred.probabilities,
                                pred.entropy)
                summary["cases"][case.case_id] = {"status": "done", "seconds": {
                    **{k: round(v, 4) for k, v in pred.seconds.items()}, "total": round(time.perf_counter() - t0, 4)}}
            except VolsegError as e:
                log.error("skipping case %s: %s", case.case_id, e)
                summary["cases"][case.case_id] = {"status": "failed", "error": str(e)}
            bar.update()
        exporter.wait()
    finally:
        bar.close()
        reader.shutdown()
        exporter.close()
    statuses = [c["status"] for c in summary["cases"].values()]
    summary["counts"] = {s: statuses.count(s) for s in ("done", "skipped", "failed")}
    write_json(out_dir / "summary.json", summary)
    return summary
