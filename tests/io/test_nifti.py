import gzip

import numpy as np
import pytest
import SimpleITK as sitk

from volseg.errors import DatasetError
from volseg.io.nifti import Geometry, read_geometry, read_image, write_image

OBLIQUE = tuple(np.round(sitk.VersorTransform((0.3, 0.2, 0.9), 0.4).GetMatrix(), 12))


@pytest.mark.parametrize("ending", [".nii.gz", ".nii"])
def test_round_trip_keeps_geometry_exactly(tmp_path, ending):
    geom = Geometry((5, 6, 7), (2.5, 0.7, 0.8), (10.0, -20.5, 3.25), OBLIQUE)
    array = np.random.default_rng(0).normal(size=geom.shape).astype(np.float32)
    path = write_image(tmp_path / f"a{ending}", array, geom)
    back, g2 = read_image(path)
    np.testing.assert_array_equal(back, array)
    assert g2.shape == geom.shape
    np.testing.assert_allclose(g2.spacing, geom.spacing, rtol=1e-6)
    np.testing.assert_allclose(g2.origin, geom.origin, atol=1e-5)
    np.testing.assert_allclose(g2.direction, geom.direction, atol=1e-6)
    assert geom.matches(g2) is None
    assert read_geometry(path).matches(geom) is None


def test_voxel_world_helpers_agree_with_itk(tmp_path):
    geom = Geometry((5, 6, 7), (2.5, 0.7, 0.8), (10.0, -20.5, 3.25), OBLIQUE)
    write_image(tmp_path / "a.nii.gz", np.zeros(geom.shape, np.uint8), geom)
    image = sitk.ReadImage(str(tmp_path / "a.nii.gz"))
    zyx = np.array([[1.0, 2.5, 3.0], [4.0, 0.0, 6.0]])
    world = geom.voxel_to_world(zyx)
    for p, w in zip(zyx, world):
        np.testing.assert_allclose(image.TransformContinuousIndexToPhysicalPoint(tuple(p[::-1])), w, atol=1e-4)
    np.testing.assert_allclose(geom.world_to_voxel(world), zyx, atol=1e-9)


def test_write_is_atomic_on_failure(tmp_path):
    geom = Geometry((2, 2, 2), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError):
        write_image(tmp_path / "x.nii.gz", np.zeros((3, 3, 3)), geom)
    assert list(tmp_path.iterdir()) == []


def _write(tmp_path, name, array, spacing=(1.0, 1.0, 1.0)):
    image = sitk.GetImageFromArray(array, isVector=False)
    path = tmp_path / name
    sitk.WriteImage(image, str(path))
    return path


def test_truncated_gzip_is_rejected(tmp_path):
    geom = Geometry((16, 16, 16), (1.0, 1.0, 1.0))
    path = write_image(tmp_path / "a.nii.gz", np.random.default_rng(0).normal(size=geom.shape).astype(np.float32), geom)
    data = path.read_bytes()
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="bad.nii.gz.*(truncated|corrupt)"):
        read_image(bad)


def test_truncated_uncompressed_is_rejected(tmp_path):
    geom = Geometry((16, 16, 16), (1.0, 1.0, 1.0))
    path = write_image(tmp_path / "a.nii", np.ones(geom.shape, np.float32), geom)
    bad = tmp_path / "bad.nii"
    bad.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(DatasetError, match="truncated"):
        read_image(bad)


def test_garbage_file_is_rejected(tmp_path):
    bad = tmp_path / "junk.nii.gz"
    bad.write_bytes(gzip.compress(b"not a nifti at all" * 10))
    with pytest.raises(DatasetError, match="junk.nii.gz"):
        read_image(bad)


def test_nan_and_inf_are_rejected(tmp_path):
    a = np.zeros((4, 4, 4), np.float32)
    a[1, 2, 3] = np.nan
    a[0, 0, 0] = np.inf
    path = write_image(tmp_path / "nan.nii.gz", a, Geometry((4, 4, 4), (1.0, 1.0, 1.0)))
    with pytest.raises(DatasetError, match="2 NaN or Inf"):
        read_image(path)


@pytest.mark.parametrize("shape", [(8, 9), (2, 3, 4, 5)])
def test_2d_and_4d_are_rejected(tmp_path, shape):
    path = _write(tmp_path, "img.nii.gz", np.zeros(shape, np.float32))
    with pytest.raises(DatasetError, match=r"expected a 3D image"):
        read_image(path)


def test_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="file not found"):
        read_image(tmp_path / "nope.nii.gz")


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_complex_images_are_rejected(tmp_path, dtype):
    """Regression: complex voxels were read, and the imaginary part dropped with only a numpy warning."""
    import nibabel as nib

    path = tmp_path / "complex.nii.gz"
    nib.save(nib.Nifti1Image(np.full((4, 5, 6), 1 + 2j, dtype), np.eye(4)), str(path))
    with pytest.raises(DatasetError, match=r"complex.nii.gz: expected a real-valued image, got complex") as e:
        read_image(path, dtype=np.float32)
    assert "\n" not in str(e.value)
    with pytest.raises(DatasetError, match="complex voxels"):
        read_geometry(path)
