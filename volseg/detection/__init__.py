"""Detection parts: box helpers and the fusion of predicted boxes.

Boxes are (z0, y0, x0, z1, y1, x1) in voxels, half-open (see :mod:`volseg.detection.boxes`).

* :mod:`volseg.detection.boxes` — boxes from instance maps, mirror / shift / scale / clip, volume, IoU.
* :mod:`volseg.detection.clustering` — NMS per model, weighted box clustering, top-k selection.

Anchor shapes and detection levels are planned in :mod:`volseg.planning.anchors`.
"""

from volseg.detection.boxes import (box_iou, box_volume, boxes_from_instances, clip_boxes, flip_boxes, scale_boxes,
                                    shift_boxes)
from volseg.detection.clustering import (Detections, concat_detections, nms, select_detections, top_k,
                                         weighted_box_clustering)

__all__ = ["Detections", "box_iou", "box_volume", "boxes_from_instances", "clip_boxes", "concat_detections",
           "flip_boxes", "nms", "scale_boxes", "select_detections", "shift_boxes", "top_k", "weighted_box_clustering"]

# Training parts, imported on first use (they load MONAI's detection utilities, ~2 s):
# * volseg.detection.coder — BoxCoder: (dz, dy, dx, dd, dh, dw) deltas relative to anchors.
# * volseg.detection.matching — AnchorMatcher (ATSS + ignore boxes), HardNegativeSampler.
# * volseg.detection.losses — DetectionLoss: {"cls", "box"} terms over sampled anchors.
# * volseg.detection.targets — DetectionTargets: augmented instance map → target, boxes, classes.
_LAZY = {"BoxCoder": "coder", "AnchorMatcher": "matching", "BACKGROUND": "matching", "IGNORE": "matching",
         "HardNegativeSampler": "matching", "anchor_labels": "matching", "DetectionLoss": "losses",
         "DetectionTargets": "targets", "IGNORE_LABEL": "targets", "instance_targets": "targets"}
__all__ += sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"volseg.detection.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'volseg.detection' has no attribute {name!r}")
