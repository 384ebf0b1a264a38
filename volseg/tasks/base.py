"""The task seam: what segmentation, detection and change detection each decide.

One trainer loop (:mod:`volseg.training.trainer`), one sliding-window engine
(:mod:`volseg.inference.sliding_window`) and one model-folder format (:mod:`volseg.model`)
serve every task. What differs between tasks sits behind :class:`Task`, looked up by the
plan's ``task`` key in an explicit registry (:func:`register_task`, :func:`list_tasks`).

Life of a task in the pipeline::

    plan     Task.plan_outputs(labels)                  what the network predicts (the plan's outputs)
             Task.configure(fingerprint, config)       planner additions (anchors, levels, ...)
    train    task.prepare(config)                      bind the configuration (also before predicting)
             task.build_network(config)                the network of a configuration
             task.loader_options(config)               label maps to read, placement of foreground samples
             task.targets(config, training)            augmented patch → training targets (in the workers)
             task.loss(config)(outputs, targets)       {"term": scalar}; the loop sums and logs them
             task.batch_stats(outputs, targets)        summable statistics of a validation batch
             task.score(stats)                         the number that drives the EMA and the best checkpoint
    predict  task.aggregator(config, props, opts, ..) what the sliding window keeps of every tile
             task.restore(result, props, geometry, ..) the case on the input grid
             task.postprocess(prediction, calibration) calibrated rules (post-processing, thresholds)
             task.export(prediction, ...)              NIfTI, boxes JSON / CSV, lesion tables
             task.finish_folder(out_dir, case_ids)     files gathering every case (candidates.csv)
    validate task.validation_options()                 predict options of the held-out cases
             task.evaluate_validation(...)             held-out cases scored against the dataset's references
             task.calibrators()                        fitted on held-out predictions, written to MODEL/<name>.json
    conformal task.conformal_kind                      "dense" (probability maps) or "boxes"
             task.conformal_targets(probs, by_class)   score maps a calibrated threshold applies to
             task.apply_conformal(prediction, cal, ..) ``predict --calibrated``: the calibrated sets
             task.calibrated_copy(prediction, ..)      the same beside the plain outputs (``--calibrated-out``)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch

_TASKS: dict[str, type] = {}


@dataclass(frozen=True)
class TileGrid:
    """Where the sliding window puts its tiles, given to :meth:`TileAggregator.setup`.

    Attributes:
        shape: Spatial shape (z, y, x) of the padded image the tiles cover, voxels.
        pads: Per axis (before, after) zero padding added to reach at least one patch.
        patch: Tile size (z, y, x), voxels.
        starts: Per axis, the tile start positions (voxels of the padded image).
        device: Where the networks and the accumulators live.
        members: Forward passes averaged per tile: networks (folds) × mirrorings.
    """

    shape: tuple[int, int, int]
    pads: list[tuple[int, int]]
    patch: tuple[int, int, int]
    starts: list[list[int]]
    device: torch.device
    members: int


class TileAggregator(Protocol):
    """What the sliding window keeps of every tile: dense maps, or boxes.

    The engine calls :meth:`setup` once, then for every row of tiles (one start along
    :attr:`row_axis`, 0 = z or 1 = y, in increasing order, when :attr:`row_wise`; else one row
    holding every tile) :meth:`start_row` with that start,
    and for every batch of tiles :meth:`add` once per ensemble member (network × mirroring)
    and :meth:`commit` once; finally :meth:`finish`.
    """

    row_wise: bool
    row_axis: int

    def setup(self, grid: TileGrid) -> None: ...

    def start_row(self, start: int) -> None: ...

    def add(self, output: Any, offsets: Sequence[tuple[int, int, int]], flip_dims: Sequence[int]) -> None:
        """One member's output for a batch of tiles; ``flip_dims`` are the tensor dims (2 = z)
        the input was mirrored along, ``offsets`` the tiles' lower corners (padded-image voxels)."""

    def commit(self, offsets: Sequence[tuple[int, int, int]]) -> None: ...

    def finish(self) -> Any: ...


class Calibrator(Protocol):
    """A rule chosen on held-out predictions and applied by ``predict``: post-processing, a
    detection sweep, a conformal threshold. Its parameters are JSON, in ``MODEL/<name>.json``."""

    name: str

    def fit(self, cases: list) -> dict | None:
        """Parameters from out-of-fold ``cases`` (task-specific records), or None when there is nothing to fit."""

    def apply(self, prediction: "CasePrediction", params: dict, spacing: Sequence[float]) -> "CasePrediction": ...


@dataclass
class CasePrediction:
    """One case on its input grid.

    Attributes:
        labels: uint8 (Z, Y, X) label map, or None (a task without dense labels).
        probabilities: fp16 (K, Z, Y, X) or None.
        entropy: fp16 (Z, Y, X) predictive entropy in nats, or None.
        boxes: Task-specific box records (detection), or None.
        lesions: Task-specific lesion records (change detection: one dict per lesion), or None.
        maps: Task-specific arrays that post-processing needs but export does not write unless
            asked (change detection: ``"regions"``, the fp16 (4, Z, Y, X) sigmoid maps).
        seconds: Timings of the stages, seconds.
        probabilities_layout: Where export writes the probabilities: "volseg"
            (``maps/CASE_probabilities.npz``, fp16) or "nnunet" (``CASE.npz`` beside the label
            map, fp16, key ``probabilities`` only, where nnU-Net v2 writes them).
    """

    labels: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    entropy: np.ndarray | None = None
    boxes: dict | None = None
    lesions: list | None = None
    maps: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    probabilities_layout: str = "volseg"


class Task(Protocol):
    """One kind of model: the decisions that differ between segmentation, detection and change."""

    name: str
    score_name: str  # what :meth:`score` measures, for logs (e.g. "pseudo-Dice")

    @classmethod
    def plan_outputs(cls, labels: dict) -> dict:
        """The plan's ``outputs`` (softmax classes or sigmoid regions) for ``dataset.json``'s labels."""

    @classmethod
    def configure(cls, fingerprint: dict, config: dict) -> dict:
        """Planner additions to one configuration (e.g. anchors); returns the configuration."""

    @classmethod
    def estimate_network(cls, fingerprint: dict, spacing: list[float], network: dict, device: str) -> dict:
        """The candidate U-Net ``network`` with what :meth:`configure` will add to it that costs
        memory and compute (e.g. detection heads), for the planner's patch and batch sizing
        (:mod:`volseg.planning.memory`); ``spacing`` (z, y, x) mm, ``device`` "cuda" or "cpu"."""

    def prepare(self, config: dict) -> None:
        """Bind the configuration about to be trained or predicted with (called once, first)."""

    def build_network(self, config: dict) -> torch.nn.Module: ...

    def loader_options(self, config: dict) -> dict:
        """``{"labels": "classes" | "instances", "random_offset": bool}`` and optionally
        ``"class_weights"`` (odds per label value of forced samples): which label map the
        training loader reads and how forced foreground samples are placed."""

    def targets(self, config: dict, training: bool = True) -> Callable[..., dict]:
        """A batchgenerators transform turning the augmented ``seg`` of a batch into ``target``
        (``training``: for the training loader, which may add task-specific augmentation first)."""

    def loss(self, config: dict) -> Callable[[Any, Any], dict[str, torch.Tensor]]: ...

    def batch_stats(self, outputs: Any, targets: Any) -> torch.Tensor: ...

    def score(self, stats: torch.Tensor) -> tuple[float, dict]:
        """(score, extra log fields) of summed statistics; NaN when nothing could be scored."""

    def aggregator(self, config: dict, props: dict, options: Any, device: torch.device,
                   calibration: dict | None = None) -> TileAggregator:
        """What the sliding window keeps for one case (``props``: its preprocessing record;
        ``calibration``: the model folder's fitted rules, for those that act during aggregation)."""

    def restore(self, result: Any, props: dict, geometry: Any, options: Any) -> CasePrediction: ...

    def postprocess(self, prediction: CasePrediction, calibration: dict, spacing: Sequence[float]) -> CasePrediction: ...

    def export(self, out_dir: Path, case_id: str, ending: str, geometry: Any, prediction: CasePrediction) -> list[Path]: ...

    def done_file(self, out_dir: Path, case_id: str, ending: str) -> Path:
        """The file whose presence means the case is complete (``--resume``); written last."""

    def finish_folder(self, out_dir: Path, case_ids: list[str]) -> None:
        """After every case of a folder is exported: files that gather all cases (e.g. ``candidates.csv``)."""

    def validation_options(self) -> dict:
        """Extra ``PredictOptions`` for the held-out predictions (e.g. keep probabilities to calibrate on)."""

    def evaluate_validation(self, pred_dir: Path, dataset_root: Path, case_ids: list[str]) -> dict:
        """Score held-out predictions against the dataset's references (written to ``pred_dir/reference``)."""

    def calibrators(self) -> list[Calibrator]: ...

    conformal_kind: str  # "dense": calibrated on probability maps; "boxes": on box scores

    def conformal_targets(self, probabilities: np.ndarray, by_class: bool) -> dict[str, tuple[np.ndarray, tuple]]:
        """Dense tasks: target name → (float32 (Z, Y, X) score map, reference label values) of a
        case's fp16 (K, Z, Y, X) probabilities; one ``"all"`` target, or one per class."""

    def apply_conformal(self, prediction: CasePrediction, conformal: dict, calibration: dict,
                        spacing: Sequence[float]) -> CasePrediction:
        """The calibrated sets (``conformal["thresholds"]``: target → threshold) in place of the
        argmax and post-processing; ``calibration`` holds the other fitted calibrators."""

    def calibrated_copy(self, prediction: CasePrediction, conformal: dict, calibration: dict,
                        spacing: Sequence[float], options: Any) -> CasePrediction:
        """:meth:`apply_conformal` of a restored prediction as a new prediction, leaving
        ``prediction`` for the plain post-processing (``predict --calibrated-out``: both from
        one set of forward passes)."""


def register_task(name: str) -> Callable[[type], type]:
    """Class decorator registering a task under ``name`` (the plan's ``task`` key).

    Example:
        >>> @register_task("my_task")  # doctest: +SKIP
        ... class MyTask: ...
    """

    def decorator(cls: type) -> type:
        old = _TASKS.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(f"task {name!r} is already registered (by {old!r})")
        cls.name = name
        _TASKS[name] = cls
        return cls

    return decorator


def list_tasks() -> list[str]:
    """Sorted names of the registered tasks."""
    import volseg.tasks  # noqa: F401  (registers the built-in tasks)

    return sorted(_TASKS)


def task_class(name: str) -> type:
    """The class registered as ``name``.

    Raises:
        ValueError: No task is registered under ``name``.
    """
    if name not in list_tasks():
        raise ValueError(f"unknown task {name!r}; registered: {', '.join(list_tasks())}")
    return _TASKS[name]


def make_task(plans: dict) -> Task:
    """The task of a plan, bound to it (``plans["task"]``, default ``"segmentation"``).

    Example:
        >>> task = make_task(plans)  # doctest: +SKIP
        >>> net = task.build_network(plans["configurations"]["3d_cpu"])  # doctest: +SKIP
    """
    return task_class(plans.get("task", "segmentation"))(plans)
