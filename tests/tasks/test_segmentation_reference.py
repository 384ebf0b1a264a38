import json

import numpy as np

from volseg.io.nifti import Geometry, read_image, write_image
from volseg.tasks.segmentation import write_reference


def test_reference_of_an_instance_map_is_its_class_map(tmp_path):
    geometry = Geometry(shape=(4, 5, 6), spacing=(2.0, 1.0, 1.0), origin=(1.0, 2.0, 3.0))
    inst = np.zeros((4, 5, 6), np.uint8)
    inst[0, 0, :2], inst[1, 1, :3], inst[2, 2, :4] = 1, 2, 3
    write_image(tmp_path / "c.nii.gz", inst, geometry)
    (tmp_path / "c.json").write_text(json.dumps({"instances": {"1": 0, "2": 1, "3": 0}}))
    write_reference(tmp_path / "c.nii.gz", tmp_path / "ref.nii.gz", tmp_path / "c.json")
    ref, g = read_image(tmp_path / "ref.nii.gz")
    expected = np.zeros_like(inst)
    expected[0, 0, :2], expected[1, 1, :3], expected[2, 2, :4] = 1, 2, 1
    np.testing.assert_array_equal(ref, expected)
    np.testing.assert_allclose(g.spacing, geometry.spacing)
    np.testing.assert_allclose(g.origin, geometry.origin)
    write_reference(tmp_path / "c.nii.gz", tmp_path / "copy.nii.gz")  # a class map is copied unchanged
    assert (tmp_path / "copy.nii.gz").read_bytes() == (tmp_path / "c.nii.gz").read_bytes()
