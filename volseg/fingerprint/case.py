"""What is measured on one case: geometry, intensities, classes and object sizes."""

from __future__ import annotations

import numpy as np

from volseg.errors import DatasetError
from volseg.fingerprint.image import image_measurements, intensity_stats
from volseg.io.dataset import CaseFiles, Dataset, read_ignore, read_instances
from volseg.io.nifti import Geometry, read_channels, read_image
from volseg.preprocessing.crop import bbox_of, box_shape, crop, nonzero_mask

SAMPLES_PER_CASE = 10_000


def load_case(case: CaseFiles, dataset: Dataset) -> tuple[np.ndarray, np.ndarray | None, Geometry, dict[int, int] | None]:
    """Read and validate the images and label of one case.

    Returns:
        ``(images, label, geometry, instances)``: images float32 (C, Z, Y, X), label int16
        (Z, Y, X) or ``None``, the geometry of channel 0, and for instance-labelled
        datasets the instance id → class index map. Ids listed under ``"ignore"`` in
        ``CASE.json`` stay in ``label`` but not in ``instances`` (so :func:`semantic_label`
        maps them to background); :func:`volseg.io.dataset.read_ignore` names them.

    Raises:
        DatasetError: A file is unreadable, not 3D, holds NaN/Inf, differs in geometry from
            channel 0, the label holds undeclared values, an instance map and its
            ``CASE.json`` disagree (an id on one side only), or a class index is out of range.
    """
    images, geometry = read_channels(case.images)
    label, instances = None, None
    if case.label is not None:
        raw, geom = read_image(case.label)
        if (diff := geometry.matches(geom)) is not None:
            raise DatasetError(case.label, f"label geometry differs from {case.images[0].name}: {diff}")
        if np.issubdtype(raw.dtype, np.floating):
            if not np.array_equal(raw, np.round(raw)):
                raise DatasetError(case.label, "label map holds non-integer values")
        label = raw.astype(np.int16)
        found = np.unique(label)
        if dataset.instance_labels:
            instances = _checked_instances(case, dataset, set(found.tolist()) - {0})
        else:
            unknown = sorted(set(found.tolist()) - set(dataset.label_values))
            if unknown:
                raise DatasetError(case.label, f"label values {unknown} are not declared in dataset.json "
                                   f"(declared: {list(dataset.label_values)})")
    return images, label, geometry, instances


def _checked_instances(case: CaseFiles, dataset: Dataset, present: set[int]) -> dict[int, int]:
    """The instance id → class map of ``case``, checked against the ids ``present`` in its map."""
    instances = read_instances(case.instances) if case.instances else {}
    ignore = read_ignore(case.instances) if case.instances else []
    json_name = case.instances.name if case.instances else f"{case.case_id}.json"
    unknown = sorted(present - set(instances) - set(ignore))
    if unknown:
        raise DatasetError(case.label, f"instance ids {unknown} are not listed in {json_name}")
    absent = sorted((set(instances) | set(ignore)) - present)
    if absent:
        raise DatasetError(case.instances, f"instance ids {absent} are listed but do not occur in {case.label.name}")
    n_classes = len(dataset.foreground_classes)
    bad = sorted({c for c in instances.values() if not 0 <= c < n_classes})
    if bad:
        raise DatasetError(case.instances, f"class indices {bad} outside 0..{n_classes - 1}")
    return instances


def semantic_label(label: np.ndarray, instances: dict[int, int] | None) -> np.ndarray:
    """Map an instance map to class values (class index + 1); identity without ``instances``."""
    if instances is None:
        return label
    lut = np.zeros(int(max([0, *instances, int(label.max())])) + 1, dtype=np.int16)
    for inst, cls in instances.items():
        lut[inst] = cls + 1
    return lut[label]


def object_sizes(label: np.ndarray, spacing: tuple[float, float, float], instances: dict[int, int] | None) -> list[dict]:
    """Size of every object: connected components per class, or instances when given.

    Returns:
        One dict per object: ``class`` (label value), ``volume_mm3``, ``diameter_mm``
        (of the sphere of equal volume) and ``extent_mm`` (bounding box, z, y, x).
    """
    import cc3d

    voxel_mm3 = float(np.prod(spacing))
    objects = []
    if instances is not None:
        comps, classes = label, {i: c + 1 for i, c in instances.items()}
    else:
        comps = cc3d.connected_components(label, connectivity=26)
        classes = None
    stats = cc3d.statistics(np.ascontiguousarray(comps).astype(np.uint32))
    for idx in range(1, len(stats["voxel_counts"])):
        n = int(stats["voxel_counts"][idx])
        if n == 0:
            continue
        box = stats["bounding_boxes"][idx]
        extent = [(s.stop - s.start) * sp for s, sp in zip(box, spacing)]
        if classes is not None:
            cls = classes.get(idx, 0)
        else:
            sub = label[box]
            cls = int(np.bincount(sub[comps[box] == idx].ravel()).argmax())
        vol = n * voxel_mm3
        objects.append({"class": int(cls), "volume_mm3": round(vol, 3),
                        "diameter_mm": round(float((6 * vol / np.pi) ** (1 / 3)), 3),
                        "extent_mm": [round(float(e), 3) for e in extent]})
    return objects


def fingerprint_case(case: CaseFiles, dataset: Dataset, seed: int = 0) -> tuple[dict, np.ndarray]:
    """Measure one case.

    Returns:
        ``(record, samples)``: the JSON-ready record, and float32 (C, N) intensities of up to
        ``SAMPLES_PER_CASE`` foreground voxels per channel (pooled over cases for the
        dataset-level statistics).
    """
    images, label, geometry, instances = load_case(case, dataset)
    box = bbox_of(nonzero_mask(images))
    record: dict = {"case_id": case.case_id, "spacing": list(geometry.spacing), "shape": list(geometry.shape),
                    "direction": list(geometry.direction),
                    "shape_after_crop": box_shape(box), "crop_bbox": box}
    cropped_fraction = float(np.prod(box_shape(box)) / np.prod(geometry.shape))
    record["fraction_kept_by_crop"] = round(cropped_fraction, 5)
    rng = np.random.default_rng(seed)
    if label is not None:
        sem = semantic_label(label, instances)
        fg = sem > 0
        record["class_voxels"] = {str(v): int(n) for v, n in zip(*np.unique(sem, return_counts=True))}
        record["objects"] = object_sizes(crop(label, box), geometry.spacing, instances)
    else:
        fg = nonzero_mask(images)
    values = images[:, fg]
    if values.shape[1] == 0:  # no foreground: fall back to the non-zero region
        values = images[:, nonzero_mask(images)]
    if values.shape[1] > SAMPLES_PER_CASE:
        values = values[:, rng.choice(values.shape[1], SAMPLES_PER_CASE, replace=False)]
    record["intensity"] = [intensity_stats(values[c]) for c in range(values.shape[0])]
    record.update(image_measurements(images, seed))
    return record, values.astype(np.float32)
