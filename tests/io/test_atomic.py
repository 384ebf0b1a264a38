"""Atomic outputs: telling a whole output file from one cut short."""


def test_output_complete_tells_whole_files_from_cut_ones(tmp_path):
    import numpy as np

    from volseg.io.atomic import output_complete
    from volseg.io.nifti import Geometry, write_image

    nii = write_image(tmp_path / "a.nii.gz", np.ones((8, 8, 8), np.float32), Geometry((8, 8, 8), (1.0, 1.0, 1.0)))
    assert output_complete(nii)
    data = nii.read_bytes()
    nii.write_bytes(data[: len(data) - 20])
    assert not output_complete(nii)
    (tmp_path / "b.json").write_text('{"boxes": [')
    assert not output_complete(tmp_path / "b.json")
    (tmp_path / "c.json").write_text('{"boxes": []}')
    assert output_complete(tmp_path / "c.json")
    (tmp_path / "d.csv").write_text("")
    assert not output_complete(tmp_path / "d.csv") and not output_complete(tmp_path / "missing.nii.gz")
