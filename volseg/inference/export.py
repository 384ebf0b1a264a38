"""Writing one case's predictions atomically, in a background thread."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

from volseg.io.atomic import atomic_path
from volseg.io.nifti import Geometry, write_image


def export_case(out_dir: Path, case_id: str, ending: str, geometry: Geometry, labels: np.ndarray,
                probabilities: np.ndarray | None = None, entropy: np.ndarray | None = None,
                extra_maps: dict[str, np.ndarray] | None = None, probabilities_layout: str = "volseg") -> list[Path]:
    """Write ``CASE<ending>`` (labels), and optionally ``maps/CASE_probabilities.npz`` (fp16,
    (K, Z, Y, X); with ``probabilities_layout="nnunet"`` ``CASE.npz`` beside the label map,
    key ``probabilities`` only), ``maps/CASE_entropy<ending>`` (entropy in nats, float32 NIfTI) and one
    ``maps/CASE_<name><ending>`` per entry of ``extra_maps`` ((Z, Y, X); uint8 maps stay uint8,
    others are written as float32). The maps go to a sub-folder so that the output folder
    holds only label maps (what ``evaluate`` reads). The label file is written last: its
    presence means the case is complete (``--resume``)."""
    written = []
    for name, array in (extra_maps or {}).items():
        data = array if array.dtype == np.uint8 else array.astype(np.float32)
        written.append(write_image(out_dir / "maps" / f"{case_id}_{name}{ending}", data, geometry))
    maps = out_dir / "maps"
    if probabilities is not None and probabilities_layout == "nnunet":
        path = out_dir / f"{case_id}.npz"
        with atomic_path(path) as tmp:
            np.savez_compressed(tmp, probabilities=probabilities.astype(np.float16))
        written.append(path)
    elif probabilities is not None:
        path = maps / f"{case_id}_probabilities.npz"
        with atomic_path(path) as tmp:
            np.savez_compressed(tmp, probabilities=probabilities.astype(np.float16),
                                spacing=np.asarray(geometry.spacing), axis_order=np.array("kzyx"))
        written.append(path)
    if entropy is not None:
        written.append(write_image(maps / f"{case_id}_entropy{ending}", entropy.astype(np.float32), geometry))
    written.append(write_image(out_dir / f"{case_id}{ending}", labels.astype(np.uint8), geometry))
    return written


class BackgroundExporter:
    """Runs export calls (e.g. a task's ``export``) one at a time in a worker thread, so the
    next case can start on the network while the previous one is compressed and written."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="volseg-export")
        self._pending: list[Future] = []
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., list[Path]], *args, **kwargs) -> Future:
        fut = self._pool.submit(fn, *args, **kwargs)
        with self._lock:
            self._pending.append(fut)
        return fut

    def wait(self) -> None:
        """Block until every submitted export is done (re-raising the first failure)."""
        with self._lock:
            pending, self._pending = self._pending, []
        for fut in pending:
            fut.result()

    def close(self) -> None:
        self.wait()
        self._pool.shutdown()
