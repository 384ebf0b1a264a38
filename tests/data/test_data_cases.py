import json
import pickle

import numpy as np
import pytest

from volseg.data.cases import load_case, load_cases
from volseg.errors import DatasetError


def test_load_case_reads_shapes_and_locations(case_dir):
    case = load_case(case_dir, "case_000")
    assert case.shape == (40, 40, 40) and case.num_channels == 2
    assert sorted(case.class_locations) == [1, 2]
    assert case.class_locations[2].shape[1] == 3
    seg = case.seg()
    for value, locs in case.class_locations.items():
        assert np.all(seg[0][tuple(locs.T)] == value)
    assert isinstance(case.image(), np.memmap) and case.image().dtype == np.float32


def test_case_pickles_without_voxels(case_dir):
    case = load_case(case_dir, "case_000")
    case.image(), case.seg()
    blob = pickle.dumps(case)
    assert len(blob) < case.image().nbytes / 4
    clone = pickle.loads(blob)
    np.testing.assert_array_equal(clone.image(), case.image())


def test_missing_label_map_names_file(tmp_path, write_case):
    write_case(tmp_path, "a", seed=0)
    (tmp_path / "a_seg.npy").unlink()
    with pytest.raises(DatasetError, match="a_seg.npy"):
        load_case(tmp_path, "a")


def test_missing_properties(tmp_path):
    with pytest.raises(DatasetError, match="b.json"):
        load_case(tmp_path, "b")


def test_label_map_shape_mismatch(tmp_path, write_case):
    write_case(tmp_path, "a", seed=0)
    np.save(tmp_path / "a_seg.npy", np.zeros((1, 40, 40, 39), np.int16))
    with pytest.raises(DatasetError, match="expected shape"):
        load_case(tmp_path, "a")


def test_bad_class_locations(tmp_path, write_case):
    write_case(tmp_path, "a", seed=0)
    props = json.loads((tmp_path / "a.json").read_text())
    props["class_locations"] = {"1": [[0, 0, 40]]}
    (tmp_path / "a.json").write_text(json.dumps(props))
    with pytest.raises(DatasetError, match="outside"):
        load_case(tmp_path, "a")
    props["class_locations"] = {"lesion": [[0, 0, 0]]}
    (tmp_path / "a.json").write_text(json.dumps(props))
    with pytest.raises(DatasetError, match="not an integer"):
        load_case(tmp_path, "a")


def test_load_cases_needs_cases(tmp_path):
    with pytest.raises(DatasetError, match="no cases"):
        load_cases(tmp_path, [])


def test_truncated_image_is_a_one_line_error(tmp_path, write_case):
    """Regression: a cut-short CASE.npy gave numpy's "mmap length is greater than file size"."""
    write_case(tmp_path, "c", seed=0)
    path = tmp_path / "c.npy"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DatasetError, match=r"c.npy: damaged or cut short"):
        load_case(tmp_path, "c")
