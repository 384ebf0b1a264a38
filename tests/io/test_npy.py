import numpy as np
import pytest

from volseg.io.atomic import save_npy
from volseg.io.npy import npy_complete


@pytest.fixture
def saved(tmp_path):
    return save_npy(tmp_path / "a.npy", np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5))


def test_intact_file_is_complete(saved):
    assert npy_complete(saved)


@pytest.mark.parametrize("keep", [0, 5, 60, 200, -1])
def test_truncated_file_is_not_complete(saved, keep):
    data = saved.read_bytes()
    saved.write_bytes(data[:keep])
    assert not npy_complete(saved)


def test_padded_damaged_or_missing_file_is_not_complete(saved, tmp_path):
    data = saved.read_bytes()
    saved.write_bytes(data + b"\0" * 8)
    assert not npy_complete(saved)
    saved.write_bytes(b"garbage!" + data[8:])
    assert not npy_complete(saved)
    assert not npy_complete(tmp_path / "missing.npy")


def test_large_header_version_2(tmp_path):
    path = tmp_path / "v2.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array(f, np.ones((3, 4), np.int16), version=(2, 0))
    assert npy_complete(path)
    path.write_bytes(path.read_bytes()[:-1])
    assert not npy_complete(path)


def test_object_arrays_are_not_complete(tmp_path):
    path = tmp_path / "obj.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert not npy_complete(path)
