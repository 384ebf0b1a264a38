"""Prediction of whole cases: preprocess → sliding window → back to the input grid → post-process → export.

The steps that differ between tasks (what the sliding window keeps, restoring, export) are
the model's :class:`~volseg.tasks.base.Task`."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from volseg.io.nifti import Geometry
from volseg.model import LoadedModel
from volseg.preprocessing.case import preprocess_image
from volseg.tasks import CasePrediction

log = logging.getLogger(__name__)


@dataclass
class PredictOptions:
    """How to predict. ``None`` fields take the plan's ``inference`` settings."""

    step_fraction: float | None = None
    tile_batch: int | None = None  # tiles per forward pass (default: see tile_batch())
    tta: bool = True
    save_probabilities: bool = False
    probabilities_layout: str = "volseg"  # or "nnunet": CASE.npz beside the label map (see export_case)
    save_uncertainty: bool = False
    save_candidates: bool = False  # detection: also CASE_candidates.npz, every tile's boxes before NMS
    device: str = "auto"
    backend: str = "auto"
    runtime: str = "auto"  # forward pass: "torch", "openvino", "onnxruntime" or "auto" (see volseg.runtime)
    precision: str = "f32"  # "bf16" only on request
    memory_budget_gb: float | None = None
    postprocess: bool = True
    calibrated: bool = False  # apply MODEL/calibration.json (or calibration_file) instead of post-processing
    calibration_file: str | None = None  # implies calibrated, unless calibrated_out is given
    calibrated_out: str | None = None  # also write the calibrated outputs to this folder, from the same forward passes
    shift_check: bool = True  # compare each case with the training data (when the model keeps a reference)
    shift_alpha: float = 0.05  # flag a case whose shift p-value is at most this
    refuse_shifted: bool = False  # do not write the outputs of a flagged case

    def __post_init__(self) -> None:
        if self.tile_batch is not None and (isinstance(self.tile_batch, bool) or not isinstance(self.tile_batch, int)
                                            or self.tile_batch < 1):
            raise ValueError(f"tile_batch must be a positive integer, got {self.tile_batch!r}")
        if self.calibrated and self.calibrated_out is not None:
            raise ValueError("calibrated writes only the calibrated outputs and calibrated_out writes them beside "
                             "the plain ones: give one of the two")
        self.calibrated = (self.calibrated or bool(self.calibration_file)) and self.calibrated_out is None

    @property
    def keeps_conformal_inputs(self) -> bool:
        """Whether a case keeps what the calibrated sets are made of (e.g. its probabilities)."""
        return self.calibrated or self.calibrated_out is not None

    @property
    def uncertainty(self) -> bool:
        """Whether the uncertainty maps are computed: to be written, or for the shift check."""
        return self.save_uncertainty or self.shift_check


def resolve_device(device: str) -> torch.device:
    """"auto" → CUDA when available, else the CPU. On CUDA, a process started by ``torchrun``
    takes the GPU of its ``LOCAL_RANK``."""
    import os

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but no CUDA device is available")
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
    return torch.device(device)


def tile_batch(config: dict, options: PredictOptions, device: torch.device) -> int:
    """Tiles per forward pass: ``options.tile_batch`` when given, else the plan's
    ``inference.tile_batch``, or on the CPU its ``tile_batch_cpu`` when the plan has one."""
    inf = config["inference"]
    if options.tile_batch is not None:
        return int(options.tile_batch)
    return int(inf.get("tile_batch_cpu", inf["tile_batch"]) if device.type == "cpu" else inf["tile_batch"])


def with_runtime(model: LoadedModel, options: PredictOptions, device: torch.device):
    """``model`` with its networks run by the runtime ``options`` ask for (checked against torch
    on one tile batch; see :func:`volseg.runtime.select_runtime`), and the choice made."""
    from volseg.model.folder import fold_dir
    from volseg.runtime import select_runtime

    cfg = model.config
    shape = (tile_batch(cfg, options, device), model.num_channels, *cfg["patch_size"])
    networks, choice = select_runtime(model.networks, [fold_dir(model.root, f) for f in model.folds], shape,
                                      options.runtime, options.precision, device, getattr(model.task, "mode", "softmax"))
    if choice.notice:
        log.warning("%s", choice.notice)
    if choice.runtime != "torch" or choice.precision != "f32":
        log.info("%s", choice.describe())
    return replace(model, networks=networks), choice


def prepare(model: LoadedModel, images: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, dict, float]:
    """Preprocess a (C, Z, Y, X) image for ``model``: (data, properties, seconds)."""
    t0 = time.perf_counter()
    data, props = preprocess_image(images, geometry, model.plans, model.config)
    return data, props, time.perf_counter() - t0


def predict_images(model: LoadedModel, images: np.ndarray, geometry: Geometry, options: PredictOptions,
                   device: torch.device, prepared: tuple[np.ndarray, dict, float] | None = None,
                   conformal: dict | None = None, probe=None) -> CasePrediction:
    """Predict one case given as a (C, Z, Y, X) float32 image on ``geometry``'s grid.

    Args:
        model: A loaded model folder (one network per fold; logits are averaged).
        images: (C, Z, Y, X) float32, channels in the model's order.
        geometry: Geometry of the input grid; the result has exactly this grid.
        options: TTA, step, outputs, device and backend.
        device: Where the networks run.
        prepared: The output of :func:`prepare` for these images, when already computed.
        conformal: A calibration record (:func:`volseg.conformal.calibrate.load_calibration`):
            its thresholds replace the argmax and the post-processing.
        probe: A :class:`~volseg.shift.features.FeatureProbe` on ``model.networks`` (shift check).

    Returns:
        The task's prediction on the input grid (labels and optional maps for segmentation),
        post-processed with the model's calibrated rules.
    """
    prediction, seconds = _restored(model, images, geometry, options, device, prepared, probe)
    t0 = time.perf_counter()
    if conformal is not None:
        prediction = model.task.apply_conformal(prediction, conformal, model.calibration, geometry.spacing)
    elif options.postprocess:
        prediction = model.task.postprocess(prediction, model.calibration, geometry.spacing)
    seconds["restore"] += time.perf_counter() - t0
    prediction.seconds = seconds
    return prediction


def predict_images_and_calibrated(model: LoadedModel, images: np.ndarray, geometry: Geometry,
                                  options: PredictOptions, device: torch.device, conformal: dict,
                                  prepared: tuple[np.ndarray, dict, float] | None = None,
                                  probe=None) -> tuple[CasePrediction, CasePrediction]:
    """:func:`predict_images` twice from one set of forward passes: the plain prediction
    (post-processed unless ``options.postprocess`` is False) and the calibrated sets of
    ``conformal``, as ``predict_images(..., conformal=conformal)`` gives them.

    Returns:
        ``(plain, calibrated)``, on the input grid; they may share arrays (read-only).
    """
    prediction, seconds = _restored(model, images, geometry, options, device, prepared, probe)
    t0 = time.perf_counter()
    calibrated = model.task.calibrated_copy(prediction, conformal, model.calibration, geometry.spacing, options)
    prediction.maps.pop("probabilities", None)  # kept for the calibrated sets only
    if options.postprocess:
        prediction = model.task.postprocess(prediction, model.calibration, geometry.spacing)
    seconds["restore"] += time.perf_counter() - t0
    prediction.seconds, calibrated.seconds = seconds, dict(seconds)
    return prediction, calibrated


def _restored(model: LoadedModel, images: np.ndarray, geometry: Geometry, options: PredictOptions,
              device: torch.device, prepared, probe) -> tuple[CasePrediction, dict]:
    """The sliding window and the task's restore onto the input grid, without post-processing;
    with the seconds of each stage."""
    from volseg.inference.sliding_window import run_sliding_window

    cfg, task = model.config, model.task
    inf = cfg["inference"]
    data, props, prep_seconds = prepared or prepare(model, images, geometry)
    t1 = time.perf_counter()
    aggregator = task.aggregator(cfg, props, options, device, model.calibration)
    result, network_seconds = run_sliding_window(
        model.networks, torch.from_numpy(data), cfg["patch_size"], aggregator,
        step_fraction=options.step_fraction or inf["step_fraction"],
        mirror_axes=inf["mirror_axes"] if options.tta else (), tile_batch=tile_batch(cfg, options, device),
        device=device, probe=probe)
    t2 = time.perf_counter()
    prediction = task.restore(result, props, geometry, options)
    prediction.probabilities_layout = options.probabilities_layout
    seconds = {"preprocess": prep_seconds, "network_and_stitching": t2 - t1, "restore": time.perf_counter() - t2,
               "network": float(network_seconds),
               **{k: float(v) for k, v in (getattr(result, "timings", None) or {}).items()
                  if k in ("boxes", "clustering")}}
    return prediction, seconds


def _read_and_prepare(model: LoadedModel, case) -> tuple:
    from volseg.inference.cases import read_input_case

    images, geometry = read_input_case(case, model.num_channels)
    return images, geometry, prepare(model, images, geometry)


def predict_folder(inputs: list, out_dir: str | Path, model: LoadedModel, options: PredictOptions,
                   resume: bool = False, progress: bool = True, shard=None) -> dict:
    """Predict every case found in ``inputs`` into ``out_dir`` (with ``shard``, a
    :class:`~volseg.inference.shards.Shard`, only that rank's share of them).

    A bad case (unreadable, wrong channel count, channels with different geometry) is
    reported and skipped; the others complete. With ``resume``, a case whose last output file
    is whole (:func:`~volseg.io.atomic.output_complete`) is skipped; a truncated one is redone.
    The next case is read and preprocessed in a background thread while the current one
    runs, and outputs are written by another.

    With ``options.calibrated_out``, the calibrated outputs (those of ``options.calibrated``)
    are written to that folder too, with its own ``summary.json``, from the same forward
    passes as the plain outputs; a case is complete (``resume``) when it is in both.

    Each case is compared with the training data when the model keeps a shift reference
    (:mod:`volseg.shift`): its ``shift`` record gives the scores, the fingerprint statistics
    outside the training range and, with ``MODEL/shift.json``, the p-values and whether it is
    flagged. A flagged case is still written, unless ``options.refuse_shifted``.

    With a shard, the summary is written to ``out_dir/summary.shard-K-of-N.json``, and
    ``summary.json`` (and the task's folder-wide files) once every shard's summary is there
    (:func:`~volseg.inference.shards.merge_summaries`).

    Returns:
        The summary also written to ``out_dir/summary.json``: per case ``status`` ("done",
        "skipped", "failed" or "refused"), ``error``, timings, ``uncertainty`` and ``shift``;
        ``shift`` at the top lists the flagged cases. With a shard: that shard's summary, whose
        ``merged`` says whether ``summary.json`` now holds every shard.
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    from volseg.errors import VolsegError
    from volseg.inference.cases import find_input_cases
    from volseg.inference.export import BackgroundExporter
    from volseg.io.atomic import check_output_dir, output_complete
    from volseg.shift.check import describe_flag
    from volseg.shift.features import FeatureProbe

    out_dir = check_output_dir(out_dir, inputs)
    dirs = [out_dir]
    if options.calibrated_out is not None:
        cal_dir = check_output_dir(options.calibrated_out, inputs)
        if cal_dir.resolve() == out_dir.resolve():
            raise VolsegError(cal_dir, "is the output folder of the plain predictions; choose another folder for "
                              "the calibrated ones")
        dirs.append(cal_dir)
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    device = resolve_device(options.device)
    ending = model.plans["dataset"].get("file_ending", ".nii.gz")
    conformal = None
    if options.keeps_conformal_inputs:  # before the inputs are searched: a missing calibration fails first
        from volseg.conformal.calibrate import load_calibration

        cal_file = Path(options.calibration_file or Path(model.root) / "calibration.json")
        conformal = load_calibration(cal_file, model.plans.get("task", "segmentation"))
    check = _shift_check(model, options)
    if check is None and options.shift_check:
        options = replace(options, shift_check=False)
    cases = all_cases = find_input_cases(inputs, model.num_channels)
    if shard is not None:
        from volseg.inference.shards import shard_cases

        cases = shard_cases(all_cases, shard, model.config["spacing"])
    todo = [c for c in cases
            if not (resume and all(output_complete(model.task.done_file(d, c.case_id, ending)) for d in dirs))]
    if todo:  # the inputs are known to be there before a network is exported or checked
        model, runtime = with_runtime(model, options, device)
    else:
        from volseg.runtime import RuntimeChoice

        runtime = RuntimeChoice(requested=options.runtime, requested_precision=options.precision)
    shift = _shift_summary(check, options, model.config_name) if check is not None else None
    summaries = [_folder_summary(model, options, device, runtime, shift, shard, cases, todo,
                                 (conformal, cal_file) if conformal is not None and (options.calibrated or d is not out_dir)
                                 else None) for d in dirs]
    if len(dirs) == 2:
        summaries[0]["calibrated_out"] = str(dirs[1])
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
                probe = FeatureProbe(model.networks) if check is not None and check.features is not None else None
                try:
                    if len(dirs) == 2:
                        preds = predict_images_and_calibrated(model, images, geometry, options, device, conformal,
                                                              prepared, probe)
                    else:
                        preds = (predict_images(model, images, geometry, options, device, prepared, conformal, probe),)
                finally:
                    if probe is not None:
                        probe.close()
                record = _case_record(preds[0], images, geometry, check, probe)
                if record.get("shift", {}).get("flagged"):
                    log.warning("%s", describe_flag(case.case_id, record["shift"], check.alpha))
                    for summary in summaries:
                        summary["shift"]["flagged"].append(case.case_id)
                    if options.refuse_shifted:
                        record["status"] = "refused"
                for d, pred, summary in zip(dirs, preds, summaries):
                    if not options.save_uncertainty:
                        _drop_uncertainty(pred)
                    if record["status"] == "done":
                        exporter.submit(model.task.export, d, case.case_id, ending, geometry, pred)
                    summary["cases"][case.case_id] = {
                        **record, "seconds": {**{k: round(v, 4) for k, v in pred.seconds.items()},
                                              "total": round(time.perf_counter() - t0, 4)}}
            except VolsegError as e:
                log.error("skipping case %s: %s", case.case_id, e)
                for summary in summaries:
                    summary["cases"][case.case_id] = {"status": "failed", "error": str(e)}
            bar.update()
        exporter.wait()
        if shard is None:
            for d in dirs:
                model.task.finish_folder(d, [c.case_id for c in cases])
    finally:
        bar.close()
        reader.shutdown()
        exporter.close()
    for d, summary in zip(dirs, summaries):
        _write_summary(model, d, summary, shard, all_cases)
    return summaries[0]


def _folder_summary(model: LoadedModel, options: PredictOptions, device: torch.device, runtime, shift: dict | None,
                    shard, cases: list, todo: list, calibration: tuple[dict, Path] | None) -> dict:
    """The ``summary.json`` of one output folder before its cases are predicted (``shift``: the
    top-level shift record, copied); with ``calibration`` (the record and its file), that of
    calibrated outputs."""
    summary = {"model": str(model.root), "configuration": model.config_name, "folds": model.folds,
               "device": str(device), "tta": options.tta, "runtime": runtime.record(), "cases": {}}
    if shard is not None:
        summary["shard"] = {"name": shard.name, "index": shard.index, "count": shard.count,
                            "cases": [c.case_id for c in cases]}
    if calibration is not None:
        from volseg.conformal.calibrate import settings_warning, summary_record

        conformal, cal_file = calibration
        summary["calibration"] = summary_record(conformal, cal_file)
        warning = settings_warning(conformal, model.folds, options.tta, model.config_name)
        if warning:
            log.warning("%s", warning)
            summary["calibration"]["warning"] = warning
    if shift is not None:
        summary["shift"] = {**shift, "flagged": list(shift["flagged"])}
    for c in cases:
        if c not in todo:
            summary["cases"][c.case_id] = {"status": "skipped", "reason": "already predicted (--resume)"}
    return summary


def _write_summary(model: LoadedModel, out_dir: Path, summary: dict, shard, all_cases: list) -> None:
    """Count the statuses and write ``summary.json`` (with a shard: its shard summary, then the
    merged one and the folder-wide files once every shard is done)."""
    from volseg.io.atomic import write_json

    statuses = [c["status"] for c in summary["cases"].values()]
    summary["counts"] = {s: statuses.count(s) for s in ("done", "skipped", "failed", "refused")}
    if shard is None:
        write_json(out_dir / "summary.json", summary)
        return
    from volseg.inference.shards import merge_summaries

    write_json(out_dir / shard.summary_file, summary)
    summary["merged"] = merge_summaries(out_dir, shard.count) is not None
    if summary["merged"]:
        model.task.finish_folder(out_dir, [c.case_id for c in all_cases])


def _shift_check(model: LoadedModel, options: PredictOptions):
    """The model's shift check for this run, or None (turned off, or no reference kept)."""
    if not options.shift_check:
        return None
    from volseg.shift.check import load_shift_check

    return load_shift_check(model.root, model.folds, options.shift_alpha)


def _shift_summary(check, options: PredictOptions, config_name: str) -> dict:
    """The top-level ``shift`` record of ``summary.json``; logs why p-values may not hold."""
    from volseg.shift.check import settings_warning

    rec = {"alpha": check.alpha, "calibration_cases": check.calibration_cases,
           "scores": [k for k, on in (("fingerprint", check.fingerprint is not None),
                                      ("features", check.features is not None), ("uncertainty", True)) if on],
           "refuse_shifted": options.refuse_shifted, "flagged": []}
    warning = settings_warning(check, options.tta, config_name)
    if warning:
        log.log(logging.INFO if check.calibration is None else logging.WARNING, "%s", warning)
        rec["warning"] = warning
    return rec


def _case_record(pred: CasePrediction, images: np.ndarray, geometry: Geometry, check, probe) -> dict:
    """A predicted case's ``summary.json`` record (without timings): its mean uncertainty and,
    with a shift check, its ``shift`` record."""
    from volseg.inference.uncertainty import case_uncertainty

    record: dict = {"status": "done"}
    unc = case_uncertainty(pred)
    if unc is not None:
        record["uncertainty"] = unc
    if check is not None:
        features = probe.features if probe is not None else None
        record["shift"] = check.report(*check.scores(images, geometry.spacing, pred.labels, features, unc))
    return record


def _drop_uncertainty(prediction: CasePrediction) -> None:
    """Forget the uncertainty maps computed only for the shift check (not to be written)."""
    prediction.entropy = None
    for name in ("max_prob", "expected_entropy", "mutual_information"):
        prediction.maps.pop(name, None)
