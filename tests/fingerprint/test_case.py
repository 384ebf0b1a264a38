import numpy as np
import pytest
from synthetic import make_dataset

from volseg.errors import DatasetError
from volseg.fingerprint.case import fingerprint_case, load_case, object_sizes
from volseg.io.dataset import load_dataset
from volseg.io.nifti import Geometry, read_image, write_image


def _rewrite(path, fn):
    array, geom = read_image(path, check_finite=False)
    array, geom = fn(array, geom)
    write_image(path, array, geom)


@pytest.mark.parametrize("field,value,what", [
    ("spacing", (2.5, 0.8, 0.9), "spacing"),
    ("origin", (0.0, 0.0, 0.0), "origin"),
    ("direction", (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), "direction"),
])
def test_channel_geometry_mismatch(tmp_path, field, value, what):
    root = make_dataset(tmp_path / "d", n_cases=1, channels=("T1", "FLAIR"))
    path = root / "imagesTr" / "case_000_0001.nii.gz"
    _rewrite(path, lambda a, g: (a, Geometry(**{**g.__dict__, field: value})))
    ds = load_dataset(root)
    with pytest.raises(DatasetError, match=rf"case_000_0001.nii.gz: channel geometry differs .*{what}"):
        load_case(ds.cases[0], ds)


def test_label_shape_mismatch(tmp_path):
    root = make_dataset(tmp_path / "d", n_cases=1)
    path = root / "labelsTr" / "case_000.nii.gz"
    _rewrite(path, lambda a, g: (a[:-1], Geometry((a.shape[0] - 1, *a.shape[1:]), g.spacing, g.origin, g.direction)))
    ds = load_dataset(root)
    with pytest.raises(DatasetError, match=r"case_000.nii.gz: label geometry differs .*shape"):
        load_case(ds.cases[0], ds)


def test_undeclared_label_values(tmp_path):
    root = make_dataset(tmp_path / "d", n_cases=1)
    _rewrite(root / "labelsTr" / "case_000.nii.gz", lambda a, g: (np.where(a > 0, 7, 0).astype(np.int16), g))
    ds = load_dataset(root)
    with pytest.raises(DatasetError, match=r"label values \[7\] are not declared"):
        load_case(ds.cases[0], ds)


def test_nan_voxels(tmp_path):
    root = make_dataset(tmp_path / "d", n_cases=1)

    def poison(a, g):
        a = a.copy()
        a[0, 0, :3] = np.nan
        return a, g

    _rewrite(root / "imagesTr" / "case_000_0000.nii.gz", poison)
    ds = load_dataset(root)
    with pytest.raises(DatasetError, match=r"case_000_0000.nii.gz: image holds 3 NaN"):
        load_case(ds.cases[0], ds)


def test_fingerprint_record(tmp_path):
    root = make_dataset(tmp_path / "d", n_cases=1, n_labels=2)
    ds = load_dataset(root)
    record, samples = fingerprint_case(ds.cases[0], ds)
    assert record["spacing"] == pytest.approx([2.5, 0.8, 0.7])
    assert record["shape"] == [20, 24, 28]
    assert set(record["class_voxels"]) <= {"0", "1", "2"}
    assert samples.shape[0] == 1 and samples.shape[1] == sum(n for k, n in record["class_voxels"].items() if k != "0")
    assert record["intensity"][0]["p00_5"] <= record["intensity"][0]["p50"] <= record["intensity"][0]["p99_5"]


def test_object_sizes_in_mm():
    label = np.zeros((10, 20, 20), np.int16)
    label[2:4, 5:15, 5:10] = 1     # 2 × 10 × 5 voxels
    label[6:8, 1:3, 1:3] = 1       # a second component of the same class
    objs = sorted(object_sizes(label, (2.0, 0.5, 0.5), None), key=lambda o: -o["volume_mm3"])
    assert len(objs) == 2
    assert objs[0]["volume_mm3"] == pytest.approx(100 * 2 * 0.25)
    assert objs[0]["extent_mm"] == pytest.approx([4.0, 5.0, 2.5])
    assert objs[0]["diameter_mm"] == pytest.approx((6 * 50 / np.pi) ** (1 / 3), rel=1e-3)
