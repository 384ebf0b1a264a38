"""Atomic writes: a file appears complete under its final name, or not at all."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    The temporary file keeps the final suffix (``suffix`` or the full suffix of
    ``path``, e.g. ``.nii.gz``) so that writers that infer the format from the name
    work. If the body raises, the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_owner()}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


STALE_AFTER_S = 24 * 3600.0  # a temporary file of another machine is stale after a day
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40] or "host"


def _owner() -> str:
    """``HOST-PID`` of this process, as temporary names carry it."""
    return f"{_host()}-{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Delete the temporary files that killed writes of :func:`atomic_path` left in ``folder``.

    A temporary file is ``.NAME.HOST-PID.XXXXXXXX.tmp[SUFFIX]``. It is stale when its writer is
    gone: on this host, no process ``PID`` runs; from another host (a shared file system), it
    has not been modified for :data:`STALE_AFTER_S` seconds. Temporary files of running
    writers, and every other file, are left alone.

    Returns:
        The paths removed (none when ``folder`` does not exist).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    host, now, removed = _host(), time.time(), []
    for path in folder.rglob(".*.tmp*") if recursive else folder.glob(".*.tmp*"):
        m = _TEMP.match(path.name)
        if m is None or not path.is_file():
            continue
        try:
            gone = (not _alive(int(m["pid"])) if m["host"] == host
                    else now - path.stat().st_mtime > STALE_AFTER_S)
            if gone and int(m["pid"]) != os.getpid():
                path.unlink()
                removed.append(path)
        except OSError:  # removed meanwhile, or not ours to remove
            continue
    return removed


@contextlib.contextmanager
def removed_if_left_empty(folder: str | os.PathLike) -> Iterator[Path]:
    """Remove ``folder`` when the body fails and the folder, new before it, holds no file.

    So a command that fails before writing anything leaves no empty output folder behind;
    a folder that existed before is never removed.
    """
    folder = Path(folder)
    existed = folder.exists()
    try:
        yield folder
    except BaseException:
        if not existed and folder.is_dir() and not any(p.is_file() for p in folder.rglob("*")):
            shutil.rmtree(folder, ignore_errors=True)
        raise


def write_atomic(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_path)`` and atomically move the result to ``path``."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    """Write ``obj`` as JSON atomically (keys kept in insertion order)."""

    def _write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=indent, default=_json_default)
            f.write("\n")

    return write_atomic(path, _write)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` atomically."""
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Save one array as ``.npy`` atomically (memory-mappable on load)."""

    def _write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(array), allow_pickle=False)

    return write_atomic(path, _write)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def output_complete(path: str | os.PathLike) -> bool:
    """Whether an output file is whole: a NIfTI as long as its header and gzip trailer say, a
    JSON file that parses, any other file non-empty. False for a missing file."""
    import json

    from volseg.errors import VolsegError
    from volseg.io.nifti import check_nifti_complete

    path = Path(path)
    if not path.is_file():
        return False
    if path.name.endswith((".nii", ".nii.gz")):
        try:
            check_nifti_complete(path)
        except VolsegError:
            return False
        return True
    if path.suffix == ".json":
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            return False
        return True
    return path.stat().st_size > 0


def check_output_dir(out_dir: str | os.PathLike, inputs: Sequence[str | os.PathLike] = ()) -> Path:
    """Check, before any work starts, that a command can write into the folder ``out_dir``.

    Nothing is created: a command that fails later leaves no empty folder behind. Writability
    is probed with a temporary file in ``out_dir``, or in its nearest existing parent.
    Temporary files that killed writes left in ``out_dir`` are removed
    (:func:`remove_stale_temps`).

    Args:
        out_dir: The folder a command writes into.
        inputs: The command's input files or folders; the output may not be one of these
            folders (or the folder of an input file).

    Raises:
        VolsegError: Naming the folder: it is an existing file, it is an input folder, a file
            lies on its path, or nothing can be written there (a read-only file system,
            missing permissions, an immutable folder).
    """
    from volseg.errors import VolsegError

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise VolsegError(out, "exists and is not a folder; choose another output folder (-o)")
    target = out.resolve()
    for given in inputs:
        folder = Path(given).resolve()
        folder = folder if folder.is_dir() or not folder.exists() else folder.parent
        if folder == target:
            raise VolsegError(out, f"is the input folder {given}; outputs would be written among the inputs; "
                              "choose another output folder (-o)")
    existing = target
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise VolsegError(out, f"cannot write the output folder: {existing} is a file")
    try:
        fd, probe = tempfile.mkstemp(prefix=".volseg-write-check.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise VolsegError(out, f"cannot write the output folder: {e.strerror or e}") from None
    remove_stale_temps(out, recursive=True)
    return out
