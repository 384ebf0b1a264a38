import json

import numpy as np
import pytest
from synthetic import blob_case

from volseg.io.nifti import Geometry, write_image

GEOM = Geometry((16, 20, 24), (2.5, 0.8, 0.7), (1.0, 2.0, 3.0))


@pytest.fixture
def folders(tmp_path):
    """pred/ and ref/ with cases c0..c2 (two labels; predictions shifted by one voxel) and a dataset.json."""
    for i in range(3):
        _, lab = blob_case(GEOM.shape, seed=i, n_labels=2)
        write_image(tmp_path / "ref" / f"c{i}.nii.gz", lab.astype(np.uint8), GEOM)
        write_image(tmp_path / "pred" / f"c{i}.nii.gz", np.roll(lab, 1, axis=2).astype(np.uint8), GEOM)
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "dataset.json").write_text(json.dumps(
        {"labels": {"background": 0, "organ": 1, "tumour": 2, "all": [1, 2]}, "task": "segmentation"}))
    return tmp_path


@pytest.fixture
def geom():
    return GEOM
