"""Tasks: what segmentation, detection and change detection each decide (see :mod:`volseg.tasks.base`).

Registered tasks (the plan's ``task`` key): ``"segmentation"``.

Example:
    >>> from volseg.tasks import list_tasks
    >>> list_tasks()
    ['segmentation']
"""

from volseg.tasks.base import (Calibrator, CasePrediction, Task, TileAggregator, TileGrid, list_tasks, make_task,
                               register_task, task_class)
from volseg.tasks.segmentation import SegmentationTask

__all__ = ["Calibrator", "CasePrediction", "SegmentationTask", "Task", "TileAggregator", "TileGrid", "list_tasks",
           "make_task", "register_task", "task_class"]
