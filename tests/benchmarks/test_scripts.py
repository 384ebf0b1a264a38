"""Every benchmark script still imports and parses its command line (``--help``, which runs no benchmark), and
takes the machine and torch versions from benchmarks/common.py instead of a copy of its own."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"
SCRIPTS = ["change_vs_peers.py", "detection_vs_peers.py", "metrics_speed.py", "shift_detection.py",
           "conformal_coverage.py", "e2e_vs_nnunet.py", "plan_vs_nnunet.py", "train_throughput.py",
           "inference/bench_sliding_window.py", "inference/bench_runtime.py", "gpu/bench_gpu.py"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_help(script):
    proc = subprocess.run([sys.executable, str(BENCHMARKS / script), "--help"], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "usage:" in proc.stdout


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_reports_the_torch_versions_through_common(script):
    source = (BENCHMARKS / script).read_text()
    assert re.search(r"^from common import .*\bprint_versions\b", source, re.M), "prints no torch versions"
    assert not re.search(r"^def (cpu_name|peer_torch_version|print_versions)\b", source, re.M), "a copy of common.py"
    assert not re.search(r"^DEFAULT_PEER\s*=", source, re.M), "its own DEFAULT_PEER: import it from common"


def test_no_other_script_defines_the_common_helpers():
    copies = [p.relative_to(ROOT) for p in BENCHMARKS.rglob("*.py") if p.name != "common.py"
              and re.search(r"^def cpu_name\b|^DEFAULT_PEER\s*=", p.read_text(), re.M)]
    assert copies == []


def test_default_peer_is_still_importable_from_plan_vs_nnunet():
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import common, plan_vs_nnunet; "
            "assert plan_vs_nnunet.DEFAULT_PEER == common.DEFAULT_PEER; print(plan_vs_nnunet.DEFAULT_PEER)")
    proc = subprocess.run([sys.executable, "-c", code, str(BENCHMARKS)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == str(ROOT.parent / "peers" / "nnunet" / "bin" / "python")
