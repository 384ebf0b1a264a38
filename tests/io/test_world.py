import numpy as np
import pytest
import SimpleITK as sitk

from volseg.io.nifti import Geometry, geometry_of, read_image, write_image
from volseg.io.world import (box_to_world, draw_spheres, voxel_to_world, voxel_to_world_affine, world_to_box,
                             world_to_voxel)


def _rotation(deg_z: float, deg_x: float) -> np.ndarray:
    a, b = np.deg2rad(deg_z), np.deg2rad(deg_x)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


@pytest.fixture
def image() -> sitk.Image:
    """Rotated about z and x, the x axis flipped (det −1), anisotropic spacing."""
    img = sitk.Image(7, 5, 3, sitk.sitkInt16)  # ITK size (x, y, z): array (3, 5, 7)
    img.SetSpacing((0.7, 0.9, 2.5))
    img.SetOrigin((-120.5, 33.0, 210.25))
    d = _rotation(23.0, -11.0) @ np.diag([-1.0, 1.0, 1.0])
    img.SetDirection(tuple(d.ravel()))
    return img


@pytest.fixture
def points_zyx() -> np.ndarray:
    rng = np.random.default_rng(0)
    corners = np.array([[0, 0, 0], [2, 4, 6], [2, 0, 6], [0, 4, 0]], float)
    return np.concatenate([corners, rng.uniform(-2, 8, (20, 3))])


def test_voxel_to_world_matches_sitk(image, points_zyx):
    geom = geometry_of(image)
    ours = voxel_to_world(points_zyx, geom)
    ref = np.array([image.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in p[::-1]))
                    for p in points_zyx])
    np.testing.assert_allclose(ours, ref, atol=1e-9)


def test_world_to_voxel_matches_sitk(image, points_zyx):
    geom = geometry_of(image)
    world = voxel_to_world(points_zyx, geom)
    ref = np.array([image.TransformPhysicalPointToContinuousIndex(tuple(float(v) for v in w))[::-1] for w in world])
    np.testing.assert_allclose(world_to_voxel(world, geom), ref, atol=1e-9)
    np.testing.assert_allclose(world_to_voxel(world, geom), points_zyx, atol=1e-9)


def test_integer_index_is_the_array_element(image):
    """Index (z, y, x) of the helper addresses array[z, y, x] of GetArrayFromImage."""
    image = sitk.Cast(image, sitk.sitkInt16)
    arr = np.zeros((3, 5, 7), np.int16)
    arr[2, 1, 5] = 9
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(image)
    world = voxel_to_world([2, 1, 5], geometry_of(img))
    idx = img.TransformPhysicalPointToIndex(tuple(float(v) for v in world))
    assert img[idx] == 9


def test_geometry_methods_agree(image, points_zyx):
    geom = geometry_of(image)
    np.testing.assert_allclose(geom.voxel_to_world(points_zyx), voxel_to_world(points_zyx, geom), atol=1e-9)
    w = voxel_to_world(points_zyx, geom)
    np.testing.assert_allclose(geom.world_to_voxel(w), world_to_voxel(w, geom), atol=1e-9)


def test_survives_a_nifti_round_trip(tmp_path, image, points_zyx):
    geom = geometry_of(image)
    write_image(tmp_path / "a.nii.gz", np.zeros(geom.shape, np.int16), geom)
    _, back = read_image(tmp_path / "a.nii.gz")
    np.testing.assert_allclose(voxel_to_world(points_zyx, back), voxel_to_world(points_zyx, geom), atol=1e-3)


def test_affine_and_shapes(image):
    geom = geometry_of(image)
    a = voxel_to_world_affine(geom)
    np.testing.assert_allclose(a @ [1.0, 2.0, 3.0, 1.0], [*voxel_to_world([1, 2, 3], geom), 1.0], atol=1e-9)
    assert voxel_to_world(np.zeros((2, 4, 3)), geom).shape == (2, 4, 3)
    assert voxel_to_world([0, 0, 0], geom).shape == (3,)
    np.testing.assert_allclose(voxel_to_world([0, 0, 0], geom), image.GetOrigin())


def test_box_to_world_half_open():
    geom = Geometry((10, 20, 30), (2.0, 1.0, 0.5), (10.0, 0.0, -5.0))
    # voxels z 2..3, y 4..7, x 0..7: centre index (2.5, 5.5, 3.5), extents 4, 4, 4 mm
    centres, diam = box_to_world([[2, 4, 0, 4, 8, 8]], geom)
    np.testing.assert_allclose(centres, voxel_to_world([[2.5, 5.5, 3.5]], geom))
    np.testing.assert_allclose(diam, [4.0])
    # a one-voxel box is centred on that voxel and has the mean spacing as diameter
    centres, diam = box_to_world([[3, 3, 3, 4, 4, 4]], geom)
    np.testing.assert_allclose(centres[0], voxel_to_world([3, 3, 3], geom))
    np.testing.assert_allclose(diam, [3.5 / 3])


def test_box_round_trip_rotated(image):
    geom = geometry_of(image)
    centres = np.array([[-118.0, 31.0, 209.0], [-121.0, 35.5, 212.0]])
    diam = np.array([3.0, 8.5])
    boxes = world_to_box(centres, diam, geom)
    back, d = box_to_world(boxes, geom)
    np.testing.assert_allclose(back, centres, atol=1e-9)
    np.testing.assert_allclose(d, diam, atol=1e-9)
    # along each voxel axis the box spans the sphere: diameter / spacing voxels
    np.testing.assert_allclose(boxes[:, 3:] - boxes[:, :3], diam[:, None] / np.asarray(geom.spacing), atol=1e-9)


@pytest.mark.parametrize("call,match", [
    (lambda g: voxel_to_world(np.zeros((4, 2)), g), r"points_zyx: expected shape \(\.\.\., 3\)"),
    (lambda g: world_to_voxel(np.zeros(4), g), r"points_xyz: expected shape"),
    (lambda g: box_to_world(np.zeros((2, 4)), g), r"boxes_zyx: expected shape \(N, 6\)"),
    (lambda g: box_to_world([[5, 0, 0, 4, 1, 1]], g), r"upper corner below"),
    (lambda g: world_to_box(np.zeros((2, 3)), [1.0], g), r"diameters_mm: expected 2 values"),
    (lambda g: draw_spheres(np.zeros((1, 3)), [-1.0], g), r"finite diameter >= 0"),
])
def test_bad_shapes(call, match):
    with pytest.raises(ValueError, match=match):
        call(Geometry((3, 4, 5), (1.0, 1.0, 1.0)))
