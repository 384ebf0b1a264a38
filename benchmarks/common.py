"""What every benchmark script reports about the machine and the torch builds it compares.

The scripts import this module as a sibling (``sys.path.insert(0, <benchmarks folder>)``, then
``from common import ...``). volseg's torch is the one of the interpreter running the script;
a peer (nnU-Net v2) runs in its own virtual environment, whose ``python`` is asked for its
torch version in a subprocess.
"""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import TextIO

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PEER = REPO.parent / "peers" / "nnunet" / "bin" / "python"
PEER_NAME = "nnU-Net peer"
CPUINFO = Path("/proc/cpuinfo")


def _cpuinfo_field(name: str) -> str | None:
    """The value of the first ``name`` line of :data:`CPUINFO` (None when there is none or no such file)."""
    try:
        for line in CPUINFO.read_text().splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() == name:
                return value.strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo ("model name"), else what :mod:`platform` knows."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_flags() -> str:
    """The vector extensions that decide CPU speed: e.g. "AVX-512, avx512_bf16, AMX" or "AVX2 only".

    Read from the "flags" line of /proc/cpuinfo (``avx2``, ``avx512f``, ``avx512_bf16``,
    ``amx_tile``); "no AVX2" when it has none of them, "unknown" without such a line.
    """
    line = _cpuinfo_field("flags")
    if line is None:
        return "unknown"
    flags = set(line.split())
    parts = []
    if "avx512f" in flags:
        parts.append("AVX-512")
        if "avx512_bf16" in flags:
            parts.append("avx512_bf16")
    if "amx_tile" in flags:
        parts.append("AMX")
    if parts:
        return ", ".join(parts)
    return "AVX2 only" if "avx2" in flags else "no AVX2"


def volseg_torch_version() -> str:
    """The torch version of this interpreter, the one volseg runs on."""
    import torch

    return str(torch.__version__)


def peer_torch_version(python: Path, timeout: float = 120.0) -> str | None:
    """The torch version of a peer environment, asked of its ``python``.

    Returns:
        ``torch.__version__`` as that interpreter prints it, or None when the file is missing, cannot
        be run, has no importable torch or does not answer within ``timeout`` seconds.
    """
    python = Path(python)
    if not python.is_file():
        return None
    try:
        proc = subprocess.run([str(python), "-c", "import torch; print(torch.__version__)"], capture_output=True,
                              text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        return None
    return lines[-1]


def versions_report(peer_python: Path | None) -> dict:
    """``{"volseg_torch": ..., "peer_torch": ...}`` for a JSON report.

    ``peer_torch`` is None when no peer runs (``peer_python`` None) or its torch cannot be read.
    """
    return {"volseg_torch": volseg_torch_version(),
            "peer_torch": None if peer_python is None else peer_torch_version(Path(peer_python))}


def print_versions(peer_python: Path | None, file: TextIO | None = None) -> dict:
    """Print the torch versions compared (and a warning line when they differ); returns :func:`versions_report`.

    Prints e.g. ``torch: volseg 2.13.0+cpu, nnU-Net peer 2.13.0+cpu``, or ``torch: volseg 2.13.0+cpu``
    when no peer runs (``peer_python`` None), or ``..., nnU-Net peer not found at PATH``.
    """
    out = sys.stdout if file is None else file
    rep = versions_report(peer_python)
    line = f"torch: volseg {rep['volseg_torch']}"
    if peer_python is not None:
        peer = Path(peer_python)
        if rep["peer_torch"] is not None:
            line += f", {PEER_NAME} {rep['peer_torch']}"
        elif peer.is_file():
            line += f", {PEER_NAME} at {peer}: torch version unreadable"
        else:
            line += f", {PEER_NAME} not found at {peer}"
    print(line, file=out, flush=True)
    if rep["peer_torch"] is not None and rep["peer_torch"] != rep["volseg_torch"]:
        print(f"warning: the comparison is across different torch builds (volseg {rep['volseg_torch']}, "
              f"{PEER_NAME} {rep['peer_torch']})", file=out, flush=True)
    return rep


def monai_labels(logits, slices: int = 8):
    """uint8 (Z, Y, X) labels of MONAI's (K, Z, Y, X) output, the way volseg's finalize takes them:
    ``max(0).indices`` a few z-slices at a time. In torch 2.13 on the CPU, ``argmax(0)`` over the
    channel dimension is about 40× slower than ``max(0).indices`` (0.47 s against 0.011 s at
    K = 2, 96×160×160), and a whole-volume argmax holds int64 indices of every voxel; either would
    count against MONAI what is not its engine."""
    import torch

    out = torch.empty(logits.shape[1:], dtype=torch.uint8)
    for z in range(0, logits.shape[1], slices):
        out[z:z + slices] = logits[:, z:z + slices].max(0).indices.to(torch.uint8).cpu()
    return out


def reset_peak_rss() -> bool:
    """Restart this process's peak resident set (``VmHWM``) at its current resident set, so that
    :func:`peak_rss_mb` measures from here on (Linux: ``/proc/self/clear_refs``). Returns whether
    it could; without it the peak includes every earlier moment, e.g. building the input."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident set of this process so far, MB (``VmHWM`` of /proc/self/status; NaN elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def best_of(repeat: int, fn):
    """(result, fastest wall time in s) of ``repeat`` calls: the machine may be shared."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return out, best
