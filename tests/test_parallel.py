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
