import json

import numpy as np
import pytest
from synthetic import make_dataset

from volseg.errors import DatasetError
from volseg.io.dataset import check_case_channels, load_dataset, read_instances
from volseg.io.nifti import Geometry, write_image


def _meta(root):
    return json.loads((root / "dataset.json").read_text())


def _set_meta(root, meta):
    (root / "dataset.json").write_text(json.dumps(meta))


def test_reads_nnunet_raw_folder_as_is(tmp_path):
    root = make_dataset(tmp_path / "Dataset001_X", n_cases=2, channels=("T1", "FLAIR"))
    ds = load_dataset(root)
    assert ds.task == "segmentation" and ds.num_channels == 2
    assert [c.case_id for c in ds.cases] == ["case_000", "case_001"]
    assert ds.cases[0].images[1].name == "case_000_0001.nii.gz"
    assert ds.label_values == (0, 1)


def test_uncompressed_nii(tmp_path):
    root = make_dataset(tmp_path / "d", n_cases=1, ending=".nii")
    assert load_dataset(root).cases[0].label.name == "case_000.nii"


def test_missing_dataset_json(tmp_path):
    root = make_dataset(tmp_path / "d", n_cases=1)
    (root / "dataset.json").unlink()
    with pytest.raises(DatasetError, match=r"dataset.json: file not found"):
        load_dataset(root)


@pytest.mark.parametrize("key", ["channel_names", "labels", "numTraining"])
def test_missing_required_key(tmp_path, key):
    root = make_dataset(tmp_path / "d", n_cases=1)
    meta = _meta(root)
    del meta[key]
    _set_meta(root, meta)
    with pytest.raises(DatasetError, match=f'dataset.json: .*"{key}"'):
        load_dataset(root)


def test_invalid_json(tmp_path):
    root = make_dataset(tmp_path / "d", n_cases=1)
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(DatasetError, match="invalid JSON"):
        load_dataset(root)


def test_missing_channel_file(tmp_path):
    root = make_dataset(tmp_path / "d", n_cases=2, channels=("T1", "FLAIR"))
    (root / "imagesTr" / "case_001_0001.nii.gz").unlink()
    with pytest.raises(DatasetError, match=r"case_001_0001.nii.gz: missing channel 1"):
        load_dataset(root)


def test_missing_label_file(tmp_path):
    root = make_dataset(tmp_path / "d", n_cases=2)
    (root / "labelsTr" / "case_001.nii.gz").unlink()
    _set_meta(root, {**_meta(root), "numTraining": 1})
    with pytest.raises(DatasetError, match=r"case_001.nii.gz: missing label file"):
        load_dataset(root)


def test_num_training_mismatch(tmp_path):
    root = make_dataset(tmp_path / "d", n_cases=2)
    _set_meta(root, {**_meta(root), "numTraining": 5})
    with pytest.raises(DatasetError, match='"numTraining" is 5 but labelsTr holds 2'):
        load_dataset(root)


def test_empty_dataset(tmp_path):
    root = tmp_path / "empty"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    _set_meta(root, {"channel_names": {"0": "CT"}, "labels": {"background": 0, "x": 1}, "numTraining": 0,
                     "file_ending": ".nii.gz"})
    with pytest.raises(DatasetError, match="empty dataset"):
        load_dataset(root)


def test_longitudinal_needs_timepoints(tmp_path):
    root = make_dataset(tmp_path / "d", n_cases=1, channels=("FLAIR", "FLAIR"), extra={"task": "longitudinal"})
    with pytest.raises(DatasetError, match="timepoints"):
        load_dataset(root)
    _set_meta(root, {**_meta(root), "timepoints": {"0": "baseline", "1": "followup"}})
    ds = load_dataset(root)
    assert ds.task == "longitudinal" and ds.timepoints == {0: "baseline", 1: "followup"}


def test_unknown_task(tmp_path):
    root = make_dataset(tmp_path / "d", n_cases=1, extra={"task": "classification"})
    with pytest.raises(DatasetError, match='"task" must be one of'):
        load_dataset(root)


def test_nndetection_layout(tmp_path):
    """nnDetection: raw_splitted/, "modalities", labels as class index → name, CASE.json instances."""
    root = tmp_path / "Task016_Luna"
    raw = root / "raw_splitted"
    geom = Geometry((12, 12, 12), (1.0, 1.0, 1.0))
    for d in ("imagesTr", "labelsTr"):
        (raw / d).mkdir(parents=True)
    inst = np.zeros(geom.shape, np.int16)
    inst[2:5, 2:5, 2:5] = 1
    inst[7:10, 7:10, 7:10] = 2
    write_image(raw / "imagesTr" / "c1_0000.nii.gz", np.zeros(geom.shape, np.float32), geom)
    write_image(raw / "labelsTr" / "c1.nii.gz", inst, geom)
    (raw / "labelsTr" / "c1.json").write_text(json.dumps({"instances": {"1": 0, "2": 0}}))
    _set_meta(root, {"task": "Task016_Luna", "name": "Luna", "modalities": {"0": "CT"}, "labels": {"0": "nodule"},
                     "dim": 3, "target_class": None})
    ds = load_dataset(root)
    assert ds.task == "detection" and ds.instance_labels
    assert ds.labels == {"background": 0, "nodule": 1}
    assert read_instances(ds.cases[0].instances) == {1: 0, 2: 0}


def test_detection_requires_instance_file(tmp_path):
    root = make_dataset(tmp_path / "d", n_cases=1, extra={"task": "detection"})
    with pytest.raises(DatasetError, match=r"case_000.json: missing instance"):
        load_dataset(root)


def test_inputs_never_modified(tmp_path):
    root = make_dataset(tmp_path / "d", n_cases=2)
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in root.rglob("*") if p.is_file()}
    load_dataset(root)
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in root.rglob("*") if p.is_file()}
    assert before == after


def _one_line_error(root, match):
    with pytest.raises(DatasetError, match=match) as e:
        load_dataset(root)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_binary_dataset_json(tmp_path):
    """Regression: a dataset.json of random bytes raised UnicodeDecodeError."""
    root = make_dataset(tmp_path / "d", n_cases=1)
    (root / "dataset.json").write_bytes(np.random.default_rng(0).integers(128, 256, 64, dtype=np.uint8).tobytes())
    _one_line_error(root, r"dataset.json: not a UTF-8 text file")


@pytest.mark.parametrize("value", ["three", "2", 2.0, True, None, [2]])
def test_num_training_must_be_an_integer(tmp_path, value):
    """Regression: "numTraining": "three" raised a ValueError from int()."""
    root = make_dataset(tmp_path / "d", n_cases=2)
    _set_meta(root, {**_meta(root), "numTraining": value})
    _one_line_error(root, r'dataset.json: "numTraining" must be an integer')


def test_timepoints_keys_must_be_channel_indices(tmp_path):
    """Regression: a non-integer key in "timepoints" raised a ValueError from int()."""
    root = make_dataset(tmp_path / "d", n_cases=1, channels=("FLAIR", "FLAIR"),
                        extra={"task": "longitudinal", "timepoints": {"0": "baseline", "one": "followup"}})
    _one_line_error(root, r"""dataset.json: "timepoints" keys must be channel indices .* got 'one'""")


def test_region_values_must_be_integers(tmp_path):
    root = make_dataset(tmp_path / "d", n_cases=1)
    _set_meta(root, {**_meta(root), "labels": {"background": 0, "class1": 1, "all": ["a", 1]}})
    _one_line_error(root, r'dataset.json: region "all" must be a list of integer label values')


def test_stray_extra_channel_file_is_rejected(tmp_path):
    """Regression: plan ignored a stray CASE_0002 file of a 2-channel dataset that predict rejected."""
    root = make_dataset(tmp_path / "d", n_cases=2, channels=("T1", "FLAIR"))
    stray = root / "imagesTr" / "case_001_0002.nii.gz"
    stray.write_bytes((root / "imagesTr" / "case_001_0001.nii.gz").read_bytes())
    msg = _one_line_error(root, r"case_001_0002.nii.gz: unexpected channel 2 of case case_001")
    assert "expected 2 channels: case_001_0000 to case_001_0001" in msg


def test_missing_middle_channel_names_the_missing_file(tmp_path):
    root = make_dataset(tmp_path / "d", n_cases=1, channels=("T1", "T2", "FLAIR"))
    (root / "imagesTr" / "case_000_0001.nii.gz").unlink()
    _one_line_error(root, r"imagesTr/case_000_0001.nii.gz: missing channel 1 of case case_000 \(expected 3 channels")


def test_unlabeled_cases_are_checked_too(tmp_path):
    root = make_dataset(tmp_path / "d", n_cases=2, channels=("T1", "FLAIR"))
    for p in (root / "labelsTr").iterdir():
        p.unlink()
    (root / "labelsTr").rmdir()
    (root / "imagesTr" / "case_001_0000.nii.gz").unlink()
    with pytest.raises(DatasetError, match=r"case_001_0000.nii.gz: missing channel 0 of case case_001"):
        load_dataset(root, require_labels=False)


def test_check_case_channels_one_rule_for_every_caller(tmp_path):
    """The rule predict needs: channel 1 missing while channel 2 is present names CASE_0001, not the extra file."""
    found = {0: tmp_path / "a_0000.nii", 2: tmp_path / "a_0002.nii"}
    with pytest.raises(DatasetError, match=r"a_0001.nii: missing channel 1 of case a"):
        check_case_channels("a", found, 2, tmp_path, ".nii")
    with pytest.raises(DatasetError, match=r"a_0002.nii: unexpected channel 2 of case a \(expected 2 channels"):
        check_case_channels("a", {**found, 1: tmp_path / "a_0001.nii"}, 2, tmp_path, ".nii")
    with pytest.raises(DatasetError, match=r"a_0001.nii.gz: unexpected channel 1 of case a \(expected 1 channel: a_0000\)"):
        check_case_channels("a", {0: tmp_path / "a.nii.gz", 1: tmp_path / "a_0001.nii.gz"}, 1, tmp_path)
    check_case_channels("a", {0: tmp_path / "a_0000.nii", 1: tmp_path / "a_0001.nii"}, 2, tmp_path)
