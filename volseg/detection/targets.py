"""Detection training targets from an augmented instance map: semantic map(s) and boxes.

Runs at the end of the batchgenerators pipeline, in the loader workers, after the spatial
and mirror augmentations: the boxes are those of the *augmented* instances, so they stay
tight after rotation and scaling, and instances the crop removed are gone.

Batch entries read (b samples):

* ``"seg"``: int (b, 1, z, y, x) instance map, 0 background, ``k > 0`` instance ``k``;
* ``"instance_classes"``: b mappings ``{instance id: 0-based class index}`` (ids as int or
  str, as read from JSON), one per sample; ids absent from the patch are allowed;
* ``"ignore_ids"`` (optional): b lists of instance ids that are ignore regions
  (e.g. excluded findings); missing means none.

Entries written (``"seg"`` is removed, the two inputs above are kept):

* ``"target"``: int16 (b, 1, z, y, x) semantic map, ``class index + 1`` per instance voxel,
  0 background, :data:`IGNORE_LABEL` (-1) on ignore regions; or, with ``scales``, a list
  of such maps, one per deep-supervision scale, nearest-neighbour downsampled like
  :class:`~volseg.data.augmentation.DeepSupervisionTargets`;
* ``"boxes"``: b float32 (M_i, 6) tight boxes (z0, y0, x0, z1, y1, x1), voxels of the
  patch, half-open, instances in ascending id order;
* ``"box_classes"``: b int64 (M_i,) 0-based classes of those boxes;
* ``"ignore_boxes"``: b float32 (K_i, 6) tight boxes of the ignore regions in the patch.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from batchgenerators.transforms.abstract_transforms import AbstractTransform

from volseg.data.augmentation import DeepSupervisionTargets
from volseg.detection.boxes import boxes_from_instances

IGNORE_LABEL = -1
_UNKNOWN = np.iinfo(np.int32).min


def instance_targets(instance_map: np.ndarray, instance_classes: Mapping[int | str, int],
                     ignore_ids: Sequence[int] = (), ignore_label: int = IGNORE_LABEL
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Semantic map, boxes, box classes and ignore boxes of one instance map.

    Args:
        instance_map: int (Z, Y, X) instance map, values >= 0.
        instance_classes: Instance id → 0-based class index; must cover every non-ignore
            id of the map.
        ignore_ids: Ids of ignore regions.
        ignore_label: Semantic value written on ignore regions.

    Returns:
        ``(semantic, boxes, classes, ignore_boxes)``: int16 (Z, Y, X) map (class + 1, 0,
        ``ignore_label``), float32 (M, 6) boxes (z0, y0, x0, z1, y1, x1) in voxels of the
        ids present (ascending), int64 (M,) their classes, float32 (K, 6) boxes of the
        ignore ids present.

    Raises:
        ValueError: The map is not 3D integer, holds negative values, an id of the map has
            no class, an id is both classed and ignored, or a class index is negative.

    Example:
        >>> m = np.zeros((2, 4, 4), np.int16); m[0, 1:3, 1:3] = 5; m[1, 0, 0] = 9
        >>> sem, boxes, classes, ign = instance_targets(m, {"5": 1}, ignore_ids=[9])
        >>> boxes.tolist(), classes.tolist(), ign.tolist(), int(sem[0, 1, 1]), int(sem[1, 0, 0])
        ([[0.0, 1.0, 1.0, 1.0, 3.0, 3.0]], [1], [[1.0, 0.0, 0.0, 2.0, 1.0, 1.0]], 2, -1)
    """
    m = np.asarray(instance_map)
    if m.ndim != 3 or not np.issubdtype(m.dtype, np.integer):
        raise ValueError(f"instance map: expected a 3D integer array (Z, Y, X), got {m.dtype} {m.shape}")
    classes = {int(k): int(v) for k, v in instance_classes.items()}
    ignored = {int(i) for i in ignore_ids}
    if ignored & set(classes):
        raise ValueError(f"ids {sorted(ignored & set(classes))} are both in instance_classes and ignore_ids")
    if classes and min(classes.values()) < 0:
        raise ValueError(f"instance_classes: class indices must be >= 0, got {classes}")
    present = np.unique(m[m != 0])
    if present.size and present[0] < 0:
        raise ValueError(f"instance map: ids must be >= 0, found {int(present[0])}")
    lut = np.full(int(present[-1]) + 1 if present.size else 1, _UNKNOWN, np.int32)
    lut[0] = 0
    for i, c in classes.items():
        if 0 < i < len(lut):
            lut[i] = c + 1
    for i in ignored:
        if 0 < i < len(lut):
            lut[i] = ignore_label
    unknown = present[lut[present] == _UNKNOWN]
    if unknown.size:
        raise ValueError(f"instance map: ids {unknown[:10].tolist()} have no class in instance_classes and are "
                         "not ignore ids")
    semantic = lut[m].astype(np.int16)
    kept = [int(i) for i in present if int(i) in classes]
    ign = [int(i) for i in present if int(i) in ignored]
    boxes = boxes_from_instances(m, kept).astype(np.float32).reshape(-1, 6)
    ignore_boxes = boxes_from_instances(m, ign).astype(np.float32).reshape(-1, 6)
    return semantic, boxes, np.asarray([classes[i] for i in kept], np.int64), ignore_boxes


class DetectionTargets(AbstractTransform):
    """Augmented instance map → semantic target(s), boxes, box classes and ignore boxes.

    See the module docstring for the batch entries read and written.

    Args:
        scales: Per-axis factors, one list per deep-supervision output (e.g.
            ``[[1, 1, 1], [0.5, 0.5, 0.5]]``); None writes one full-resolution target.
        ignore_label: Semantic value of ignore regions (the segmentation loss's ``ignore_label``).
        input_key: Entry holding the instance map (removed).
        output_key: Entry receiving the semantic target(s).
        classes_key: Entry holding the per-sample ``{id: class}`` mappings.
        ignore_key: Entry holding the per-sample ignore id lists (optional in the batch).

    Example:
        >>> seg = np.zeros((1, 1, 4, 4, 4), np.int16); seg[0, 0, 1:3, 0:2, 2] = 3
        >>> out = DetectionTargets([[1, 1, 1], [.5, .5, .5]])(seg=seg, instance_classes=[{3: 0}])
        >>> [t.shape for t in out["target"]], out["boxes"][0].tolist(), out["box_classes"][0].tolist()
        ([(1, 1, 4, 4, 4), (1, 1, 2, 2, 2)], [[1.0, 0.0, 2.0, 3.0, 2.0, 3.0]], [0])
    """

    def __init__(self, scales: Sequence[Sequence[float]] | None = None, ignore_label: int = IGNORE_LABEL,
                 input_key: str = "seg", output_key: str = "target", classes_key: str = "instance_classes",
                 ignore_key: str = "ignore_ids") -> None:
        if not np.iinfo(np.int16).min <= int(ignore_label) <= np.iinfo(np.int16).max:
            raise ValueError(f"ignore_label: expected an int16 value, got {ignore_label}")
        self.scales = None if scales is None else [[float(f) for f in s] for s in scales]
        self.ignore_label = int(ignore_label)
        self.input_key, self.output_key = input_key, output_key
        self.classes_key, self.ignore_key = classes_key, ignore_key

    def __call__(self, **batch):
        seg = np.asarray(batch.pop(self.input_key))
        if seg.ndim != 5 or seg.shape[1] != 1:
            raise ValueError(f"{self.input_key}: expected a (b, 1, z, y, x) instance map, got shape {seg.shape}")
        mappings = batch.get(self.classes_key)
        if mappings is None or len(mappings) != len(seg):
            found = "none" if mappings is None else len(mappings)
            raise ValueError(f"{self.classes_key}: expected one {{id: class}} mapping per sample ({len(seg)}), "
                             f"got {found}")
        ignores = batch.get(self.ignore_key)
        ignores = [()] * len(seg) if ignores is None else ignores
        if len(ignores) != len(seg):
            raise ValueError(f"{self.ignore_key}: expected one id list per sample ({len(seg)}), got {len(ignores)}")
        semantic = np.zeros(seg.shape, np.int16)
        boxes, classes, ignore_boxes = [], [], []
        for i in range(len(seg)):
            semantic[i, 0], b, c, k = instance_targets(seg[i, 0], mappings[i], ignores[i] or (), self.ignore_label)
            boxes.append(b)
            classes.append(c)
            ignore_boxes.append(k)
        if self.scales is None:
            batch[self.output_key] = semantic
        else:
            batch[self.output_key] = [DeepSupervisionTargets.downsample(semantic, s) for s in self.scales]
        batch["boxes"], batch["box_classes"], batch["ignore_boxes"] = boxes, classes, ignore_boxes
        return batch
