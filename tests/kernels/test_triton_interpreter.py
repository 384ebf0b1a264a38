import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")


def test_triton_kernels_match_torch_under_the_interpreter():
    """Triton kernels run on the CPU (TRITON_INTERPRET=1, set before triton is imported, hence a
    fresh process) and must give the torch path's labels and, within fp16 rounding, its maps."""
    script = Path(__file__).with_name("interpret_check.py")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FAIL" not in proc.stdout and proc.stdout.count("ok ") == 20
