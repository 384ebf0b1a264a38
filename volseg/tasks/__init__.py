"""Tasks: what segmentation, detection and change detection each decide (see :mod:`volseg.tasks.base`).

Registered tasks (the plan's ``task`` key): ``"segmentation"``, ``"detection"`` (Retina U-Net) and
``"longitudinal"`` (new and vanishing lesions between two timepoints).

Example:
    >>> from volseg.tasks import list_tasks
    >>> list_tasks()
    ['detection', 'longitudinal', 'segmentation']
"""

from volseg.tasks.base import (Calibrator, CasePrediction, Task, TileAggregator, TileGrid, list_tasks, make_task,
                               register_task, task_class)
from volseg.tasks.segmentation import SegmentationTask
from volseg.tasks.detection import DetectionTask  # noqa: E402  (after its base class)
from volseg.tasks.longitudinal import LongitudinalTask  # noqa: E402

__all__ = ["Calibrator", "CasePrediction", "DetectionTask", "LongitudinalTask", "SegmentationTask", "Task", "TileAggregator", "TileGrid", "list_tasks",
           "make_task", "register_task", "task_class"]
