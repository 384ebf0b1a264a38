"""Background loading: patch sampling and augmentation in worker processes.

:func:`make_loader` wires a :class:`~volseg.data.sampling.PatchSampler` and the
batchgenerators pipeline of :func:`~volseg.data.augmentation.build_transforms` into a
:class:`BatchLoader`: an endless iterator of batches that records how long the consumer
waited for each one, so the trainer can log the data-wait share of an epoch.

``num_workers > 0`` runs batchgenerators' ``MultiThreadedAugmenter`` (one process per worker,
batches returned round-robin, so the order is reproducible for a given seed).
``num_workers == 0`` produces batches in the calling process, deterministically, on a private
NumPy and Python random state (the caller's global ``np.random`` and ``random`` states are
left untouched).

Seeds: batch ``g`` (0, 1, 2, … in the order the consumer receives them) of rank ``r`` is
drawn from random streams keyed by ``(seed, r, training, g)``: the sampler's generator and
batchgenerators' global ``np.random`` and ``random`` are all re-seeded from that key before
the batch is made. A batch is therefore a function of its index alone: the same for any
number of workers, and :meth:`BatchLoader.seek` restarts the stream at any batch, which is
how a resumed training run sees exactly the batches the uninterrupted run would have.
Ranks and the training/validation loaders draw differently.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Sequence

import numpy as np
from batchgenerators.dataloading.data_loader import SlimDataLoaderBase
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter

from volseg.data.augmentation import ToTorch, build_transforms
from volseg.data.cases import Case
from volseg.data.sampling import FOREGROUND_OVERSAMPLING, PatchSampler

log = logging.getLogger(__name__)


class SamplerSource(SlimDataLoaderBase):
    """batchgenerators data loader around a :class:`PatchSampler` (endless, lazy windows).

    Worker ``w`` of ``num_workers`` (the augmenter calls :meth:`set_thread_id` in each) makes
    batches ``start + w``, ``start + w + num_workers``, … — the augmenter returns them
    round-robin, so the consumer receives batches ``start``, ``start + 1``, … in order.
    Before each batch the sampler's generator, ``np.random`` and ``random`` are re-seeded
    from ``(seed, rank, training, batch index)``.  With ``single_threaded_torch`` (set for
    worker processes) the worker also limits torch to one thread, so that augmentation
    workers do not oversubscribe the cores training runs on.
    """

    def __init__(self, sampler: PatchSampler, seed: int, training: bool, num_workers: int = 1,
                 start: int = 0) -> None:
        super().__init__(None, sampler.batch_size, None)
        self.sampler, self.seed, self.training = sampler, int(seed), bool(training)
        self.num_workers, self.start = max(int(num_workers), 1), int(start)
        self.single_threaded_torch = False
        self._made = 0

    def set_thread_id(self, thread_id: int) -> None:
        super().set_thread_id(thread_id)
        self._made = 0
        if self.single_threaded_torch:
            import torch

            torch.set_num_threads(1)

    def batch_index(self) -> int:
        """Index of the next batch this worker makes."""
        return self.start + self._made * self.num_workers + self.thread_id

    def generate_train_batch(self) -> dict:
        key = batch_seeds(self.seed, self.sampler.rank, self.training, self.batch_index())
        self._made += 1
        self.sampler.rng = np.random.default_rng(key[0])
        np.random.seed(key[1])
        random.seed(key[2])
        return self.sampler.sample_windows()


def batch_seeds(seed: int, rank: int, training: bool, index: int) -> list[int]:
    """Three 32-bit seeds (sampler, ``np.random``, ``random``) of batch ``index``.

    Example:
        >>> batch_seeds(0, 0, True, 5) == batch_seeds(0, 0, True, 5) != batch_seeds(0, 0, True, 6)
        True
    """
    return [int(v) for v in np.random.SeedSequence([seed, rank, int(training), index, 0x5EED]).generate_state(3)]


def _pin(batch: dict) -> dict:
    batch["data"] = batch["data"].pin_memory()
    batch["target"] = _pinned(batch["target"])
    return batch


def _pinned(value):
    if isinstance(value, dict):
        return {k: _pinned(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_pinned(v) for v in value]
    return value.pin_memory() if hasattr(value, "pin_memory") else value


class BatchLoader:
    """Endless iterator of batches that measures the time spent waiting for them.

    Args:
        source: The batch source (worker ``w`` calls ``source.set_thread_id(w)``).
        transform: Applied to every batch from ``source`` (in the workers); must return NumPy
            arrays (``build_transforms(..., to_torch=False)``), converted to torch here.
        num_workers: Background processes; 0 = produce in the calling process.
        pin_memory: Pin the tensors of each batch (only when CUDA is available), in the consuming
            process; the copy counts toward :attr:`wait_time`.
        num_cached: Batches buffered per worker.

    Attributes:
        wait_time: Seconds the consumer spent inside ``next()`` since the last
            :meth:`reset_wait_time` (with ``num_workers == 0``: the whole production time).
        batches: Batches returned since the last :meth:`reset_wait_time`.

    Use it as a context manager, or call :meth:`close`, so no worker outlives it.
    """

    def __init__(self, source: SamplerSource, transform, num_workers: int,
                 pin_memory: bool = False, num_cached: int = 3) -> None:
        import torch

        if num_workers < 0:
            raise ValueError(f"num_workers must be ≥ 0, got {num_workers}")
        self.num_workers = num_workers
        self.pin_memory = bool(pin_memory) and torch.cuda.is_available()
        self.wait_time = 0.0
        self.batches = 0
        self._closed = False
        self._source, self._transform, self._to_torch = source, transform, ToTorch()
        if num_workers == 0:
            source.set_thread_id(0)
            self._augmenter = None
        else:
            source.single_threaded_torch = True
            self._augmenter = MultiThreadedAugmenter(source, transform, num_workers, num_cached_per_queue=num_cached,
                                                     seeds=list(range(num_workers)), pin_memory=False)

    def __iter__(self) -> "BatchLoader":
        return self

    def _produce_here(self) -> dict:
        # the source re-seeds the global NumPy and Python streams per batch: keep the caller's
        states = np.random.get_state(), random.getstate()
        try:
            batch = self._transform(**next(self._source))
        finally:
            np.random.set_state(states[0])
            random.setstate(states[1])
        return batch

    def seek(self, index: int) -> None:
        """Continue with batch ``index`` of the stream (0 = the first batch), as if ``index``
        batches had been taken; running workers are restarted."""
        if index < 0:
            raise ValueError(f"batch index must be ≥ 0, got {index}")
        self._source.start = int(index)
        self._source._made = 0
        if self._augmenter is not None and self._augmenter.was_initialized:
            self._augmenter.restart()

    def __next__(self) -> dict:
        if self._closed:
            raise RuntimeError("BatchLoader is closed")
        t0 = time.perf_counter()
        batch = self._produce_here() if self._augmenter is None else next(self._augmenter)
        batch = self._to_torch(**batch)
        if self.pin_memory:
            batch = _pin(batch)
        self.wait_time += time.perf_counter() - t0
        self.batches += 1
        return batch

    def reset_wait_time(self) -> float:
        """Zero :attr:`wait_time` and :attr:`batches`; returns the wait time before the reset."""
        waited, self.wait_time, self.batches = self.wait_time, 0.0, 0
        return waited

    def close(self) -> None:
        """Stop and join the worker processes (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._augmenter is not None:
            self._augmenter._finish()

    def __enter__(self) -> "BatchLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing sensible left to do
            pass


def make_loader(cases: Sequence[Case], patch_size: Sequence[int], batch_size: int,
                augmentation: dict | None = None,
                deep_supervision_scales: Sequence[Sequence[float]] | None = None, *,
                targets=None, training: bool = True, foreground_oversampling: float = FOREGROUND_OVERSAMPLING, num_workers: int = 2,
                seed: int = 0, rank: int = 0, world_size: int = 1, pin_memory: bool = False,
                num_cached: int = 3, random_offset: bool = False,
                class_weights: dict[int, float] | None = None) -> BatchLoader:
    """A training or validation batch loader.

    Args:
        cases: Cases to sample from (:func:`volseg.data.cases.load_cases`).
        patch_size: Patch size (z, y, x), voxels (the plan's ``patch_size``).
        batch_size: Global batch size (the plan's); this rank gets its share
            (:func:`volseg.data.sampling.split_batch`).
        augmentation: The plan's ``augmentation`` dict; None = no augmentation.
        deep_supervision_scales: Per-axis factors per network output, e.g.
            ``[[1, 1, 1], [1, 0.5, 0.5], [0.5, 0.25, 0.25]]``; None = one target tensor.
        targets: The task's transform from the augmented ``seg`` to ``target``
            (:meth:`volseg.tasks.base.Task.targets`); replaces ``deep_supervision_scales``.
        training: False for validation: no augmentation (same sampling, same foreground
            oversampling, as nnU-Net's pseudo-Dice on patches).
        foreground_oversampling: Fraction of the global batch forced to contain foreground.
        num_workers: Background processes; 0 = in-process and deterministic.
        seed: Base seed of sampling and augmentation.
        rank, world_size: DDP rank and number of ranks.
        pin_memory: Pin batch tensors for faster host→GPU copies (CUDA only).
        num_cached: Batches buffered per worker.
        random_offset: Forced samples put their object anywhere in the middle of the patch
            (:class:`~volseg.data.sampling.PatchSampler`).
        class_weights: Odds of each label value for forced samples (``PatchSampler``).

    Returns:
        A :class:`BatchLoader` yielding ``{"data": float32 (b, C, pz, py, px), "target":
        int16 (b, 1, ...) tensor or list of them (one per scale, largest first),
        "keys": list of b case ids}``.

    Example:
        >>> cases = load_cases(folder, ids)  # doctest: +SKIP
        >>> with make_loader(cases, [64, 64, 64], 2, plan_cfg["augmentation"], [[1, 1, 1], [.5, .5, .5]]) as loader:
        ...     batch = next(loader)  # doctest: +SKIP
        ...     print(loader.wait_time)
    """
    params = augmentation if training else None
    # the spatial transform reads only what its grid covers, so the sampler needs no enlarged window
    sampler = PatchSampler(cases, patch_size, batch_size, None, foreground_oversampling,
                           seed=seed, rank=rank, world_size=world_size, random_offset=random_offset,
                           class_weights=class_weights)
    transform = build_transforms(params, patch_size, deep_supervision_scales, is_training=params is not None,
                                 to_torch=False, targets=targets)
    log.debug("loader rank %d: %d workers, batch %d, window %s → patch %s", rank, num_workers,
              sampler.batch_size, list(sampler.sample_size), list(patch_size))
    source = SamplerSource(sampler, seed, training, num_workers)
    return BatchLoader(source, transform, num_workers, pin_memory, num_cached)
