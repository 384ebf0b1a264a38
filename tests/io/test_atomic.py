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


def _dead_pid() -> int:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temporary_files_are_removed_and_live_ones_kept(tmp_path):
    """Regression: killed writes left 0-byte and multi-MB temporary files forever."""
    import os
    import time

    from volseg.io import atomic

    host = atomic._host()
    dead = tmp_path / "sub" / f".checkpoint_latest.pt.{host}-{_dead_pid()}.ab12cd_3.tmp.pt"
    dead.parent.mkdir()
    dead.write_bytes(b"\0" * 2048)
    live = tmp_path / f".case.nii.gz.{host}-{os.getpid()}.zz99yy00.tmp.nii.gz"
    live.write_bytes(b"")
    far_recent = tmp_path / ".plans.json.otherhost-1.qwerty12.tmp.json"
    far_recent.write_text("{")
    far_old = tmp_path / ".plans.json.otherhost-2.qwerty34.tmp.json"
    far_old.write_text("{")
    old = time.time() - atomic.STALE_AFTER_S - 60
    os.utime(far_old, (old, old))
    user = tmp_path / ".notes.tmp"  # not volseg's naming: never touched
    user.write_text("mine")
    assert atomic.remove_stale_temps(tmp_path) == [far_old]  # not recursive: sub/ is left
    assert sorted(atomic.remove_stale_temps(tmp_path, recursive=True)) == [dead]
    assert live.exists() and far_recent.exists() and user.exists()
    assert atomic.remove_stale_temps(tmp_path / "missing") == []


def test_a_kill_during_a_write_leaves_a_temporary_file_the_next_check_removes(tmp_path):
    import subprocess
    import sys

    from volseg.io.atomic import check_output_dir

    code = ("import os, signal\nfrom volseg.io.atomic import atomic_path\n"
            f"with atomic_path({str(tmp_path / 'big.npy')!r}) as tmp:\n"
            "    tmp.write_bytes(b'x' * 2_000_000)\n    os.kill(os.getpid(), signal.SIGKILL)\n")
    assert subprocess.run([sys.executable, "-c", code]).returncode != 0
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".big.npy.")]
    assert len(left) == 1 and left[0].stat().st_size == 2_000_000
    check_output_dir(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_failed_body_removes_only_a_folder_it_left_empty(tmp_path):
    import pytest

    from volseg.io.atomic import removed_if_left_empty

    with pytest.raises(RuntimeError):
        with removed_if_left_empty(tmp_path / "new") as out:
            (out / "preprocessed" / "3d_cpu").mkdir(parents=True)
            raise RuntimeError
    assert not (tmp_path / "new").exists()
    with pytest.raises(RuntimeError):
        with removed_if_left_empty(tmp_path / "kept") as out:
            out.mkdir()
            (out / "fingerprint.json").write_text("{}")
            raise RuntimeError
    assert (tmp_path / "kept" / "fingerprint.json").is_file()
    (tmp_path / "before").mkdir()
    with pytest.raises(RuntimeError):
        with removed_if_left_empty(tmp_path / "before"):
            raise RuntimeError
    assert (tmp_path / "before").is_dir()
