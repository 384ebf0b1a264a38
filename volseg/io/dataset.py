"""Dataset folders in nnU-Net v2 raw layout, with volseg's extra keys.

A dataset folder holds ``dataset.json``, ``imagesTr/CASE_XXXX<ending>`` (one file per
channel, XXXX the 4-digit channel index), ``labelsTr/CASE<ending>`` and optionally
``imagesTs/``.  Keys read from ``dataset.json``:

* nnU-Net v2: ``channel_names`` ({"0": "CT"}), ``labels`` ({"background": 0, ...};
  a list value declares a region, i.e. a union of labels), ``numTraining``,
  ``file_ending`` (".nii.gz" or ".nii").
* volseg extensions (all optional):
  ``task`` — "segmentation" (default), "detection" or "longitudinal";
  ``timepoints`` — channel index → timepoint name, e.g. {"0": "baseline", "1": "followup"}
  (required for "longitudinal");
  ``instance_labels`` — true when ``labelsTr`` holds instance maps, each with a
  ``labelsTr/CASE.json`` of the form {"instances": {"1": 0, "2": 1}} (instance id →
  class index, 0-based over the foreground classes), as in nnDetection. An optional
  ``"ignore": [3, 4]`` in the same file lists instance ids of the map that mark regions to
  ignore (findings that are neither targets nor negatives, e.g. LUNA16's excluded
  annotations); they are not listed under ``"instances"`` and have no class.
* nnDetection's ``dataset.json`` (``modalities``, ``labels`` as {"0": "nodule"}) is read
  as-is; it implies ``task="detection"`` and ``instance_labels=true``; a ``raw_splitted``
  sub-folder is used when present.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from volseg.errors import DatasetError

TASKS = ("segmentation", "detection", "longitudinal")


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case.

    Attributes:
        case_id: Identifier, e.g. "lung_003".
        images: One path per channel, in channel order.
        label: Label map (or instance map for detection), ``None`` for unlabeled cases.
        instances: ``CASE.json`` mapping instance id → class index (detection only).
    """

    case_id: str
    images: tuple[Path, ...]
    label: Path | None = None
    instances: Path | None = None


@dataclass(frozen=True)
class Dataset:
    """A parsed dataset folder. See the module docstring for the format."""

    root: Path
    name: str
    channel_names: dict[int, str]
    labels: dict[str, int | tuple[int, ...]]
    file_ending: str
    task: str
    timepoints: dict[int, str] | None
    instance_labels: bool
    cases: tuple[CaseFiles, ...]
    raw: dict = field(repr=False, default_factory=dict)

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def label_values(self) -> tuple[int, ...]:
        """Sorted label values that may occur in a label map (regions excluded)."""
        values = {v for v in self.labels.values() if isinstance(v, int)}
        for v in self.labels.values():
            if isinstance(v, tuple):
                values.update(v)
        return tuple(sorted(values))

    @property
    def foreground_classes(self) -> dict[str, int]:
        """Declared non-background classes, name → label value (regions excluded)."""
        return {k: v for k, v in self.labels.items() if isinstance(v, int) and v != 0}

    @property
    def has_regions(self) -> bool:
        return any(isinstance(v, tuple) for v in self.labels.values())


def load_dataset_json(path: str | os.PathLike) -> dict:
    """Read a JSON file, with a one-line error naming the file.

    Raises:
        DatasetError: The file is missing, not UTF-8 text, not valid JSON, or not a JSON object.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, "file not found")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except UnicodeDecodeError as e:
        raise DatasetError(path, f"not a UTF-8 text file (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
                           "expected JSON") from None
    except json.JSONDecodeError as e:
        raise DatasetError(path, f"invalid JSON at line {e.lineno}: {e.msg}") from None
    if not isinstance(data, dict):
        raise DatasetError(path, f"expected a JSON object, got {type(data).__name__}")
    return data


def load_dataset(root: str | os.PathLike, require_labels: bool = True) -> Dataset:
    """Parse a dataset folder and check that every file it names exists.

    Args:
        root: The dataset folder (holding ``dataset.json``), or an nnDetection task
            folder with a ``raw_splitted`` sub-folder.
        require_labels: Require ``labelsTr`` and at least one labeled case.

    Raises:
        DatasetError: With the file and the problem, for a missing ``dataset.json`` or
            key, an unknown task, missing channel or label files, or an empty dataset.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(root, "dataset folder not found")
    json_path = root / "dataset.json"
    data = load_dataset_json(json_path)
    data_root = root / "raw_splitted" if (root / "raw_splitted" / "imagesTr").is_dir() else root
    nndet = "channel_names" not in data and "modalities" in data
    channel_names = _channels(json_path, data, nndet)
    labels = _labels(json_path, data, nndet)
    file_ending = data.get("file_ending", ".nii.gz")
    if file_ending not in (".nii.gz", ".nii"):
        raise DatasetError(json_path, f'"file_ending" must be ".nii.gz" or ".nii", got {file_ending!r}')
    task = data.get("task") if data.get("task") in TASKS else ("detection" if nndet else data.get("task", "segmentation"))
    if task not in TASKS:
        raise DatasetError(json_path, f'"task" must be one of {", ".join(TASKS)}, got {task!r}')
    instance_labels = bool(data.get("instance_labels", nndet or task == "detection"))
    timepoints = _timepoints(json_path, data, channel_names, task)
    n_declared = _num_training(json_path, data, nndet)
    cases = _discover_cases(data_root, file_ending, len(channel_names), instance_labels, require_labels)
    if not cases:
        raise DatasetError(data_root / "labelsTr", "empty dataset: no labeled cases found")
    if n_declared is not None and n_declared != len(cases):
        raise DatasetError(json_path, f'"numTraining" is {n_declared} but labelsTr holds {len(cases)} cases')
    return Dataset(root=root, name=str(data.get("name", root.name)), channel_names=channel_names, labels=labels,
                   file_ending=file_ending, task=task, timepoints=timepoints, instance_labels=instance_labels,
                   cases=tuple(cases), raw=data)


def _num_training(json_path: Path, data: dict, nndet: bool) -> int | None:
    """The declared ``numTraining`` (optional for nnDetection's format)."""
    value = data.get("numTraining")
    if value is None and nndet:
        return None
    if "numTraining" not in data:
        raise DatasetError(json_path, 'missing required key "numTraining"')
    if isinstance(value, bool) or not isinstance(value, int):
        raise DatasetError(json_path, f'"numTraining" must be an integer (the number of labeled cases), got {value!r}')
    return value


def _channels(json_path: Path, data: dict, nndet: bool) -> dict[int, str]:
    key = "modalities" if nndet else "channel_names"
    if key not in data:
        raise DatasetError(json_path, f'missing required key "{key}"')
    raw = data[key]
    if not isinstance(raw, dict) or not raw:
        raise DatasetError(json_path, f'"{key}" must be a non-empty object such as {{"0": "CT"}}')
    try:
        channels = {int(k): str(v) for k, v in raw.items()}
    except ValueError:
        raise DatasetError(json_path, f'"{key}" keys must be channel indices "0", "1", ...') from None
    if sorted(channels) != list(range(len(channels))):
        raise DatasetError(json_path, f'"{key}" keys must be 0..{len(channels) - 1}, got {sorted(channels)}')
    return dict(sorted(channels.items()))


def _labels(json_path: Path, data: dict, nndet: bool) -> dict[str, int | tuple[int, ...]]:
    if "labels" not in data:
        raise DatasetError(json_path, 'missing required key "labels"')
    raw = data["labels"]
    if not isinstance(raw, dict) or not raw:
        raise DatasetError(json_path, '"labels" must be a non-empty object such as {"background": 0, "lesion": 1}')
    if nndet:  # nnDetection: {"0": "nodule"} class index → name; label maps hold instances
        try:
            classes = sorted((int(k), str(v)) for k, v in raw.items())
        except ValueError:
            raise DatasetError(json_path, '"labels" keys must be class indices "0", "1", ...') from None
        return {"background": 0, **{name: idx + 1 for idx, name in classes}}
    labels: dict[str, int | tuple[int, ...]] = {}
    for name, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, (int, list)):
            raise DatasetError(json_path, f'label "{name}" must be an integer or a list of integers, got {value!r}')
        if isinstance(value, list) and not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise DatasetError(json_path, f'region "{name}" must be a list of integer label values, got {value!r}')
        labels[str(name)] = tuple(value) if isinstance(value, list) else value
    if 0 not in labels.values():
        raise DatasetError(json_path, '"labels" must declare background as 0, e.g. {"background": 0}')
    return labels


def _timepoints(json_path: Path, data: dict, channels: dict[int, str], task: str) -> dict[int, str] | None:
    raw = data.get("timepoints")
    if raw is None:
        if task == "longitudinal":
            raise DatasetError(json_path, 'task "longitudinal" needs "timepoints", e.g. {"0": "baseline", "1": "followup"}')
        return None
    if not isinstance(raw, dict):
        raise DatasetError(json_path, '"timepoints" must map channel indices to timepoint names')
    bad = [k for k in raw if not _is_int(k)]
    if bad:
        raise DatasetError(json_path, f'"timepoints" keys must be channel indices "0", "1", ..., got {bad[0]!r}')
    tp = {int(k): str(v) for k, v in raw.items()}
    if set(tp) != set(channels):
        raise DatasetError(json_path, f'"timepoints" must name every channel {sorted(channels)}, got {sorted(tp)}')
    if task == "longitudinal" and len(set(tp.values())) < 2:
        raise DatasetError(json_path, 'task "longitudinal" needs channels from at least two timepoints')
    return dict(sorted(tp.items()))


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _discover_cases(root: Path, ending: str, n_channels: int, instance_labels: bool,
                    require_labels: bool) -> list[CaseFiles]:
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    if not images_dir.is_dir():
        raise DatasetError(images_dir, "folder not found")
    if not labels_dir.is_dir():
        if require_labels:
            raise DatasetError(labels_dir, "folder not found")
        groups = group_channel_files(images_dir, ending)
        for case_id in sorted(groups):
            check_case_channels(case_id, groups[case_id], n_channels, images_dir, ending)
        return [CaseFiles(i, channel_paths(images_dir, i, ending, n_channels)) for i in sorted(groups)]
    ids = sorted(p.name[: -len(ending)] for p in labels_dir.iterdir() if p.name.endswith(ending) and not p.name.startswith("."))
    groups = group_channel_files(images_dir, ending)
    cases = []
    for case_id in ids:
        check_case_channels(case_id, groups.get(case_id, {}), n_channels, images_dir, ending)
        images = channel_paths(images_dir, case_id, ending, n_channels)
        inst = labels_dir / f"{case_id}.json" if instance_labels else None
        if inst is not None and not inst.is_file():
            raise DatasetError(inst, f"missing instance → class file of case {case_id} (instance_labels is set)")
        cases.append(CaseFiles(case_id, images, labels_dir / f"{case_id}{ending}", inst))
    for case_id in groups:
        if case_id not in ids:
            raise DatasetError(labels_dir / f"{case_id}{ending}", f"missing label file for case {case_id} found in imagesTr")
    return cases


_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")


def channel_paths(folder: Path, case_id: str, ending: str, n_channels: int) -> tuple[Path, ...]:
    """``folder/CASE_0000<ending>``, ``folder/CASE_0001<ending>``, …"""
    return tuple(Path(folder) / f"{case_id}_{c:04d}{ending}" for c in range(n_channels))


def check_case_channels(case_id: str, found: dict[int, Path], n_channels: int, folder: str | os.PathLike,
                        ending: str = ".nii.gz") -> None:
    """Check that a case has exactly the channel files ``CASE_0000`` … ``CASE_{n-1}``.

    One rule for training data and for inputs to predict: every channel must be
    present, and a file of a channel beyond the last one is an error, not ignored.

    Args:
        case_id: The case, e.g. "lung_003".
        found: Channel index → file, as :func:`group_channel_files` groups them.
        n_channels: Channels the dataset (or model) has.
        folder: Where the files were looked for (names the missing file).
        ending: File ending of a missing channel's name (".nii.gz" or ".nii").

    Raises:
        DatasetError: Naming the first missing channel file, else the first unexpected one.

    Example:
        >>> check_case_channels("a", {0: Path("in/a_0000.nii.gz")}, 2, "in")  # doctest: +SKIP
        DatasetError: in/a_0001.nii.gz: missing channel 1 of case a (expected 2 channels: a_0000 to a_0001)
    """
    expected = (f"{n_channels} channels: {case_id}_0000 to {case_id}_{n_channels - 1:04d}" if n_channels > 1
                else f"1 channel: {case_id}_0000")
    for c in range(n_channels):
        if c not in found:
            raise DatasetError(Path(folder) / f"{case_id}_{c:04d}{ending}",
                               f"missing channel {c} of case {case_id} (expected {expected})")
    extra = sorted(c for c in found if not 0 <= c < n_channels)
    if extra:
        raise DatasetError(found[extra[0]], f"unexpected channel {extra[0]} of case {case_id} "
                           f"(expected {expected}); remove or rename the file")


def group_channel_files(folder: str | os.PathLike, ending: str) -> dict[str, dict[int, Path]]:
    """Group ``CASE_XXXX<ending>`` files of a folder by case: case id → {channel: path}."""
    groups: dict[str, dict[int, Path]] = {}
    for p in sorted(Path(folder).iterdir()):
        if not p.name.endswith(ending) or p.name.startswith("."):
            continue
        m = _CHANNEL_RE.match(p.name[: -len(ending)])
        if m:
            groups.setdefault(m["case"], {})[int(m["ch"])] = p
    return groups


def read_instances(path: str | os.PathLike) -> dict[int, int]:
    """Read a ``CASE.json`` instance file: instance id → class index (0-based)."""
    data = load_dataset_json(path)
    raw = data.get("instances")
    if not isinstance(raw, dict):
        raise DatasetError(path, 'expected {"instances": {"1": 0, ...}} mapping instance id to class index')
    try:
        return {int(k): int(v) for k, v in raw.items()}
    except (TypeError, ValueError):
        raise DatasetError(path, '"instances" keys and values must be integers') from None


def read_ignore(path: str | os.PathLike) -> list[int]:
    """Read the ``"ignore"`` instance ids of a ``CASE.json`` instance file (sorted; ``[]`` when absent).

    Raises:
        DatasetError: ``"ignore"`` is not a list of positive integers, or an id is also
            listed under ``"instances"``.
    """
    data = load_dataset_json(path)
    raw = data.get("ignore", [])
    expected = f'"ignore" must be a list of positive instance ids such as [3, 4], got {raw!r}'
    if not isinstance(raw, list) or any(isinstance(v, bool) or not isinstance(v, (int, str)) for v in raw):
        raise DatasetError(path, expected)
    try:
        ids = sorted({int(v) for v in raw})
    except ValueError:
        raise DatasetError(path, expected) from None
    if ids and ids[0] < 1:
        raise DatasetError(path, expected)
    listed = data.get("instances") if isinstance(data.get("instances"), dict) else {}
    both = sorted(i for i in ids if str(i) in {str(k).strip() for k in listed})
    if both:
        raise DatasetError(path, f'instance ids {both} are listed both under "instances" and under "ignore"')
    return ids


def region_paint_values(regions: dict) -> list[int]:
    """The label value each region paints, in the order of ``regions`` (nnU-Net's
    ``regions_class_order``): the smallest value of the region that no smaller region holds.

    Example:
        >>> region_paint_values({"whole": [1, 2, 3], "core": [2, 3], "enhancing": [3]})
        [1, 2, 3]
        >>> region_paint_values({"whole": [1, 2], "core": [2]})
        [1, 2]
    """
    groups = [set(int(v) for v in g) for g in regions.values()]
    values = []
    for g in groups:
        inner = set().union(*[h for h in groups if h < g])
        values.append(min(g - inner) if g - inner else max(g))
    return values
