import pytest

from volseg.parallel import map_in_processes


def _square(x: int) -> int:
    if x < 0:
        raise ValueError(f"negative job {x}")
    return x * x


@pytest.mark.parametrize("workers", [1, 2])
def test_results_keep_the_order_of_the_jobs(workers):
    assert map_in_processes(_square, [3, 1, 2, 5], workers, "square", progress=False) == [9, 1, 4, 25]


@pytest.mark.parametrize("workers", [1, 2])
def test_the_first_failure_is_raised(workers):
    with pytest.raises(ValueError, match="negative job -2"):
        map_in_processes(_square, [1, -2, 3], workers, "square", progress=False)


HANG_CHECK = '''
import torch
from volseg.parallel import map_in_processes


def work(i):
    x = torch.randn(1, 1, 40, 60, 60)
    return float(torch.nn.functional.interpolate(x, size=(50, 70, 70), mode="trilinear").sum() * 0 + i)


def main():
    torch.set_num_threads(2)
    x = torch.randn(2, 8, 32, 64, 64, requires_grad=True)
    torch.nn.functional.conv3d(x, torch.randn(8, 8, 3, 3, 3)).sum().backward()   # torch's threads are up
    print(map_in_processes(work, list(range(4)), 2, "check", progress=False))
'''


def test_workers_started_after_torch_ran_do_not_hang(tmp_path):
    """Regression: planning after training in one Python session hung in forked preprocessing workers."""
    import subprocess
    import sys

    (tmp_path / "hangcheck.py").write_text(HANG_CHECK)
    code = f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import hangcheck; hangcheck.main()"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-500:]
    assert out.stdout.strip() == "[0.0, 1.0, 2.0, 3.0]"
