"""benchmarks/common.py: the CPU name and flags, the peer's torch version, the versions line and its warning."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def common():
    """benchmarks/common.py loaded under its own name (the benchmarks folder stays off ``sys.path``)."""
    spec = importlib.util.spec_from_file_location("volseg_bench_common", ROOT / "benchmarks" / "common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_python(tmp_path: Path, body: str) -> Path:
    """An executable shell script standing in for a peer environment's ``python``."""
    path = tmp_path / "bin" / "python"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


@pytest.mark.skipif(sys.platform == "win32", reason="needs a shell script as an executable")
def test_peer_torch_version_asks_the_peer_python(common, tmp_path):
    assert common.peer_torch_version(_fake_python(tmp_path, "echo 9.9.9")) == "9.9.9"


def test_peer_torch_version_of_a_missing_python_is_none(common, tmp_path):
    assert common.peer_torch_version(tmp_path / "peers" / "nnunet" / "bin" / "python") is None


@pytest.mark.skipif(sys.platform == "win32", reason="needs a shell script as an executable")
def test_peer_torch_version_of_a_failing_or_unrunnable_python_is_none(common, tmp_path):
    assert common.peer_torch_version(_fake_python(tmp_path / "a", "echo 'no module named torch' >&2; exit 1")) is None
    not_executable = tmp_path / "b" / "python"
    not_executable.parent.mkdir()
    not_executable.write_text("#!/bin/sh\necho 9.9.9\n")
    not_executable.chmod(0o644)
    assert common.peer_torch_version(not_executable) is None


def _versions(common, monkeypatch, volseg: str, peer: str | None) -> None:
    monkeypatch.setattr(common, "volseg_torch_version", lambda: volseg)
    monkeypatch.setattr(common, "peer_torch_version", lambda python: peer)


def test_print_versions_warns_when_the_torch_builds_differ(common, monkeypatch, capsys, tmp_path):
    _versions(common, monkeypatch, "2.13.0+cpu", "2.9.1+cpu")
    rep = common.print_versions(tmp_path / "python")
    lines = capsys.readouterr().out.splitlines()
    assert rep == {"volseg_torch": "2.13.0+cpu", "peer_torch": "2.9.1+cpu"}
    assert lines[0] == "torch: volseg 2.13.0+cpu, nnU-Net peer 2.9.1+cpu"
    assert len(lines) == 2 and lines[1].startswith("warning: ") and "different torch builds" in lines[1]


def test_print_versions_is_quiet_when_the_torch_builds_match(common, monkeypatch, capsys, tmp_path):
    _versions(common, monkeypatch, "2.13.0+cpu", "2.13.0+cpu")
    rep = common.print_versions(tmp_path / "python")
    out = capsys.readouterr().out
    assert rep == {"volseg_torch": "2.13.0+cpu", "peer_torch": "2.13.0+cpu"}
    assert out.splitlines() == ["torch: volseg 2.13.0+cpu, nnU-Net peer 2.13.0+cpu"]
    assert "warning" not in out


def test_print_versions_without_a_peer_or_with_a_missing_one(common, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(common, "volseg_torch_version", lambda: "2.13.0+cpu")
    assert common.print_versions(None) == {"volseg_torch": "2.13.0+cpu", "peer_torch": None}
    missing = tmp_path / "nowhere" / "python"
    assert common.print_versions(missing) == {"volseg_torch": "2.13.0+cpu", "peer_torch": None}
    assert capsys.readouterr().out.splitlines() == [
        "torch: volseg 2.13.0+cpu", f"torch: volseg 2.13.0+cpu, nnU-Net peer not found at {missing}"]


def test_volseg_torch_version_is_this_interpreters(common):
    torch = pytest.importorskip("torch")
    assert common.versions_report(None) == {"volseg_torch": torch.__version__, "peer_torch": None}


def test_default_peer_is_next_to_the_repository(common):
    assert common.DEFAULT_PEER == ROOT.parent / "peers" / "nnunet" / "bin" / "python"


@pytest.mark.parametrize("flags, expected", [
    ("fpu sse2 avx avx2 avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8", "AVX-512, avx512_bf16, AMX"),
    ("fpu sse2 avx avx2 avx512f avx512bw", "AVX-512"),
    ("fpu sse2 avx avx2 fma", "AVX2 only"),
    ("fpu sse2", "no AVX2"),
])
def test_cpu_flags_and_name_from_cpuinfo(common, monkeypatch, tmp_path, flags, expected):
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nmodel name\t: Some CPU @ 2.0GHz\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    monkeypatch.setattr(common, "CPUINFO", info)
    assert common.cpu_flags() == expected
    assert common.cpu_name() == "Some CPU @ 2.0GHz"


def test_cpu_flags_and_name_without_cpuinfo(common, monkeypatch, tmp_path):
    monkeypatch.setattr(common, "CPUINFO", tmp_path / "missing")
    assert common.cpu_flags() == "unknown"
    assert isinstance(common.cpu_name(), str)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc/self/clear_refs")
def test_reset_peak_rss_forgets_an_earlier_peak(common):
    import numpy as np

    block = np.ones(64 << 20, dtype=np.uint8)  # 64 MiB touched, then freed
    del block
    before = common.peak_rss_mb()
    assert common.reset_peak_rss()
    assert common.peak_rss_mb() < before - 32  # the 64 MiB peak is gone from the new one
