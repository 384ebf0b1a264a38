"""Checking ``.npy`` files without reading their data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def npy_complete(path: str | os.PathLike) -> bool:
    """True when ``path`` is a ``.npy`` file whose length is exactly what its header promises.

    Only the header is read: a file cut short (a killed writer, a full disk), padded, or
    whose header is damaged gives ``False``, and so does a missing file or an array of
    Python objects (whose size the header does not fix).

    Example:
        >>> npy_complete("runs/demo/preprocessed/3d_fullres/case_000.npy")  # doctest: +SKIP
        True
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                return False
            offset = f.tell()
        size = path.stat().st_size
    except (OSError, ValueError, EOFError, SyntaxError):
        return False
    if dtype.hasobject:
        return False
    return size == offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
