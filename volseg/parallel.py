"""Worker processes: a pool that is safe to start after torch has run, and an ordered map over jobs.

Pools start their workers from a fork server, not by forking the calling process: a process
that has already trained or predicted holds torch's OpenMP thread pool, and a child forked
from it can hang on its first parallel operation (seen when planning after training in one
Python session).
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Sequence, TypeVar

J = TypeVar("J")
R = TypeVar("R")


def process_pool(max_workers: int) -> ProcessPoolExecutor:
    """A process pool of ``max_workers`` workers started from a fork server (see the module docstring)."""
    return ProcessPoolExecutor(max_workers=max_workers, mp_context=multiprocessing.get_context("forkserver"))


def map_in_processes(fn: Callable[[J], R], jobs: Sequence[J], num_workers: int, desc: str, unit: str = "case",
                     progress: bool = True) -> list[R]:
    """``[fn(job) for job in jobs]``, in up to ``num_workers`` processes (in this one for ≤ 1 worker
    or a single job); results in the order of ``jobs``. The first exception a job raises is re-raised.

    Example:
        >>> map_in_processes(abs, [-1, 2, -3], num_workers=1, desc="abs", progress=False)
        [1, 2, 3]
    """
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc=desc, unit=unit, disable=not progress, leave=False)
    results: list[R] = []
    try:
        if num_workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                results.append(fn(job))
                bar.update()
        else:
            with process_pool(min(num_workers, len(jobs))) as pool:
                for result in pool.map(fn, jobs):
                    results.append(result)
                    bar.update()
    finally:
        bar.close()
    return results
