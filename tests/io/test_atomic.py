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


def test_output_folder_is_checked_before_work(tmp_path, monkeypatch):
    import pytest

    from volseg.errors import VolsegError
    from volseg.io import atomic

    (tmp_path / "file").write_text("x")
    with pytest.raises(VolsegError, match="exists and is not a folder"):
        atomic.check_output_dir(tmp_path / "file")
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "case_0000.nii.gz").write_bytes(b"")
    for given in (inputs, inputs / "case_0000.nii.gz"):
        with pytest.raises(VolsegError, match="is the input folder"):
            atomic.check_output_dir(tmp_path / "in" / ".", [given])
    with pytest.raises(VolsegError, match="cannot write the output folder: .*file is a file"):
        atomic.check_output_dir(tmp_path / "file" / "sub")
    assert atomic.check_output_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists() and not list(tmp_path.glob(".volseg-write-check.*"))

    def refuse(*args, **kwargs):  # what an immutable folder (chattr +i) does, even for root
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(atomic.tempfile, "mkstemp", refuse)
    with pytest.raises(VolsegError, match="out: cannot write the output folder: Operation not permitted"):
        atomic.check_output_dir(tmp_path / "out")
