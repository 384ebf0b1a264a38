"""Patch sampling with foreground oversampling (nnU-Net's convention).

Each batch draws a random case per sample.  The last ``B - round(B * (1 - fraction))`` samples
of the *global* batch are forced to contain foreground: a label value is chosen uniformly among
the values present in the case (``class_locations``), then one of its voxels, and the patch is
centred on that voxel.  The other samples are placed uniformly.  With DDP the global batch is
split over ranks in order (rank 0 gets the first samples), so the forced samples land where they
would in a single-process batch; every rank draws from its own random stream.

:meth:`PatchSampler.sample` cuts a window of ``sample_size`` (≥ ``patch_size``, enlarged so that
rotation and scaling bring in no border, see :func:`volseg.data.augmentation.sample_size`)
centred on the final patch; the spatial transform crops it back to ``patch_size``.  Outside the
volume the window is padded with 0 (image and label).  :meth:`PatchSampler.sample_windows`
returns the same placements as lazy :class:`Window` s instead: the spatial transform then reads
only the box its rotated/scaled grid actually covers (for a 128³ patch the enlarged window is
~300³, 13× the voxels; most samples are not rotated at all).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from volseg.data.cases import Case

# nnU-Net's oversample_foreground_percent: the planner writes it into every configuration's
# ``training.foreground_oversampling``, and training reads it from there.
FOREGROUND_OVERSAMPLING = 0.33


def read_box(array: np.ndarray, lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
    """``array[:, lo:hi]`` over the spatial axes, zero where the box leaves the array.

    Args:
        array: (C, Z, Y, X), e.g. a memory map (only the box is read).
        lo, hi: Box corners (z, y, x), voxels, half-open; may lie outside the array.

    Returns:
        A new (C, *(hi - lo)) array of ``array``'s dtype.
    """
    lo, hi = np.asarray(lo, np.int64), np.asarray(hi, np.int64)
    out = np.zeros((array.shape[0], *(hi - lo)), array.dtype)
    src_lo, src_hi = np.maximum(lo, 0), np.minimum(hi, array.shape[1:])
    if np.all(src_hi > src_lo):
        src = tuple(slice(a, b) for a, b in zip(src_lo, src_hi))
        dst = tuple(slice(a, b) for a, b in zip(src_lo - lo, src_hi - lo))
        out[(slice(None), *dst)] = array[(slice(None), *src)]
    return out


@dataclass
class Window:
    """A patch placement in one volume, read lazily.

    Attributes:
        image: (C, Z, Y, X) float32, usually a memory map.
        seg: (1, Z, Y, X) integer label map.
        lower: Lower corner (z, y, x) of the final patch in volume voxels (may be negative).
        patch_size: Final patch size (z, y, x).
    """

    image: np.ndarray
    seg: np.ndarray
    lower: np.ndarray
    patch_size: np.ndarray

    @property
    def center(self) -> np.ndarray:
        """Centre of the final patch in (fractional) volume voxels."""
        return np.asarray(self.lower, float) + (np.asarray(self.patch_size, float) - 1) / 2

    def read(self, lo: Sequence[int], hi: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Image float32 (C, ...) and label int16 (1, ...) of the volume box [lo, hi), zero-padded."""
        return read_box(self.image, lo, hi).astype(np.float32, copy=False), read_box(self.seg, lo, hi).astype(
            np.int16, copy=False)


def split_batch(batch_size: int, world_size: int) -> list[int]:
    """Per-rank batch sizes of a global batch, as even as possible, larger ones first.

    Example:
        >>> split_batch(5, 2)
        [3, 2]
    """
    if world_size < 1:
        raise ValueError(f"world_size must be ≥ 1, got {world_size}")
    if batch_size < world_size:
        raise ValueError(f"global batch size {batch_size} is smaller than the number of ranks {world_size}")
    base, extra = divmod(batch_size, world_size)
    return [base + (r < extra) for r in range(world_size)]


def forced_foreground(batch_size: int, fraction: float, rank: int = 0, world_size: int = 1) -> list[bool]:
    """Which samples of this rank's share of the global batch must contain foreground.

    Sample ``i`` of the global batch is forced when ``i >= round(B * (1 - fraction))`` (nnU-Net's
    rule: 0.33 of a batch of 2 forces the last sample).

    Args:
        batch_size: Global batch size B.
        fraction: Foreground oversampling fraction in [0, 1].
        rank, world_size: This rank and the number of ranks.

    Returns:
        One flag per sample of this rank's batch.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"foreground_oversampling must be in [0, 1], got {fraction}")
    sizes = split_batch(batch_size, world_size)
    start = sum(sizes[:rank])
    first_forced = round(batch_size * (1.0 - fraction))
    return [start + i >= first_forced for i in range(sizes[rank])]


class PatchSampler:
    """Draws batches of (enlarged) patches from preprocessed cases.

    Args:
        cases: Training (or validation) cases, all with the same number of channels C.
        patch_size: Final patch size (pz, py, px), voxels.
        batch_size: Global batch size; this rank draws its share (:func:`split_batch`).
        sample_size: Size (sz, sy, sx) of the window cut from the case, ≥ ``patch_size`` and
            ``sample_size - patch_size`` even (default: ``patch_size``).
        foreground_oversampling: Fraction of the global batch forced to contain foreground
            (default :data:`FOREGROUND_OVERSAMPLING`; training passes the plan's value).
            When it rounds to no sample at all (e.g. B = 1), each sample is instead forced with
            this probability.
        seed: Base seed; the stream is ``(seed, rank, stream)`` (see :meth:`set_stream`).
        rank, world_size: DDP rank and number of ranks.
        random_offset: A forced sample puts the chosen voxel anywhere in the middle half of the
            patch (per axis) instead of at its centre, so that objects are seen at every position
            (detection: a random instance, then a random offset).
        class_weights: Relative odds of each label value when a forced sample picks one of the
            values present in the case (absent values count 1); default uniform. E.g.
            ``{1: 1, 2: 2, 3: 2}`` oversamples new and vanishing lesions of a change dataset.

    Example:
        >>> sampler = PatchSampler(cases, (64, 64, 64), batch_size=2, sample_size=(90, 90, 90))  # doctest: +SKIP
        >>> batch = sampler.sample()  # doctest: +SKIP
        >>> # batch: {"data": (2, C, 90, 90, 90), "seg": (2, 1, 90, 90, 90), "keys": [...]}
    """

    def __init__(self, cases: Sequence[Case], patch_size: Sequence[int], batch_size: int,
                 sample_size: Sequence[int] | None = None,
                 foreground_oversampling: float = FOREGROUND_OVERSAMPLING,
                 seed: int = 0, rank: int = 0, world_size: int = 1, random_offset: bool = False,
                 class_weights: dict[int, float] | None = None) -> None:
        if not cases:
            raise ValueError("PatchSampler needs at least one case")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.cases = list(cases)
        self.patch_size = np.asarray(patch_size, dtype=np.int64)
        self.sample_size = self.patch_size.copy() if sample_size is None else np.asarray(sample_size, np.int64)
        if self.patch_size.shape != (3,) or self.sample_size.shape != (3,):
            raise ValueError(f"patch_size and sample_size must have 3 entries, got {patch_size}, {sample_size}")
        margin = self.sample_size - self.patch_size
        if np.any(margin < 0) or np.any(margin % 2):
            raise ValueError(f"sample_size {list(self.sample_size)} must be ≥ patch_size {list(self.patch_size)} "
                             "with an even difference per axis")
        self.forced = forced_foreground(batch_size, foreground_oversampling, rank, world_size)
        self.probabilistic = foreground_oversampling > 0 and not any(forced_foreground(batch_size,
                                                                                       foreground_oversampling))
        self.foreground_oversampling = foreground_oversampling
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.random_offset = bool(random_offset)
        self.class_weights = None if not class_weights else {int(k): float(v) for k, v in class_weights.items()}
        if self.class_weights and min(self.class_weights.values()) <= 0:
            raise ValueError(f"class_weights must be positive, got {class_weights}")
        self.set_stream(0)

    @property
    def batch_size(self) -> int:
        """This rank's batch size."""
        return len(self.forced)

    def set_stream(self, stream: int) -> None:
        """Restart the random stream as ``(seed, rank, stream)``; a worker process uses its id."""
        self.rng = np.random.default_rng([self.seed, self.rank, int(stream)])

    def draw_location(self, case: Case, force_foreground: bool) -> tuple[np.ndarray, int | None]:
        """Where the final patch goes in ``case``.

        Args:
            case: The case.
            force_foreground: Centre the patch on a voxel of a uniformly chosen present class.

        Returns:
            (lower corner (z, y, x) of the final patch, which may be negative where the patch
            exceeds the volume; chosen label value, or None for a uniform draw).
        """
        shape = np.asarray(case.shape)
        # lowest and highest lower corners that keep the patch inside (centred where it does not fit)
        lo = np.minimum(0, (shape - self.patch_size) // 2)
        hi = np.maximum(lo, shape - self.patch_size)
        if force_foreground and case.class_locations:
            values = sorted(case.class_locations)
            if self.class_weights:
                odds = np.array([self.class_weights.get(int(v), 1.0) for v in values])
                value = values[self.rng.choice(len(values), p=odds / odds.sum())]
            else:
                value = values[self.rng.integers(len(values))]
            locs = case.class_locations[value]
            voxel = locs[self.rng.integers(len(locs))]
            if self.random_offset:
                quarter = self.patch_size // 4
                offset = self.rng.integers(quarter, np.maximum(self.patch_size - quarter, quarter + 1))
            else:
                offset = self.patch_size // 2
            return np.clip(voxel - offset, lo, hi), int(value)
        return self.rng.integers(lo, hi + 1), None

    def crop(self, case: Case, lower: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cut the ``sample_size`` window around the final patch at ``lower``, zero-padded.

        Returns:
            (image float32 (C, sz, sy, sx), label int16 (1, sz, sy, sx)).
        """
        start = np.asarray(lower) - (self.sample_size - self.patch_size) // 2
        return Window(case.image(), case.seg(), lower, self.patch_size).read(start, start + self.sample_size)

    def _draw(self) -> list[tuple[Case, np.ndarray]]:
        out = []
        for forced in self.forced:
            case = self.cases[self.rng.integers(len(self.cases))]
            if self.probabilistic:
                forced = self.rng.random() < self.foreground_oversampling
            out.append((case, self.draw_location(case, forced)[0]))
        return out

    def sample_windows(self) -> dict:
        """One batch of this rank as lazy windows (same draws as :meth:`sample`).

        Returns:
            ``{"windows": list of b Window, "keys": list of b case ids}``; for cases of
            instance maps also ``"instance_classes"`` (b ``{id: class index}``) and
            ``"ignore_ids"`` (b lists of ignore ids).
        """
        draws = self._draw()
        batch = {"windows": [Window(c.image(), c.seg(), lo, self.patch_size) for c, lo in draws],
                 "keys": [c.case_id for c, _ in draws]}
        if draws and draws[0][0].labels == "instances":  # what detection targets need besides the map
            batch["instance_classes"] = [c.properties.get("instances", {}) for c, _ in draws]
            batch["ignore_ids"] = [c.properties.get("ignore", []) for c, _ in draws]
        return batch

    def sample(self) -> dict:
        """One batch of this rank.

        Returns:
            ``{"data": float32 (b, C, sz, sy, sx), "seg": int16 (b, 1, sz, sy, sx),
            "keys": list of b case ids}`` with b = :attr:`batch_size`.
        """
        draws = self._draw()
        data = np.zeros((len(draws), self.cases[0].num_channels, *self.sample_size), np.float32)
        seg = np.zeros((len(draws), 1, *self.sample_size), np.int16)
        for i, (case, lower) in enumerate(draws):
            data[i], seg[i] = self.crop(case, lower)
        return {"data": data, "seg": seg, "keys": [c.case_id for c, _ in draws]}
