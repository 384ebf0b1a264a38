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
