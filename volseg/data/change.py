"""Augmentation for change between two timepoints: timepoint swap, lesion paste, misregistration.

Batch transforms (batchgenerators style, ``transform(**batch) -> batch``) for patches of a
longitudinal dataset: ``data`` is float32 (b, C, z, y, x) with the channels of the baseline and
of the follow-up at the indices the plan names, ``seg`` is the (b, 1, z, y, x) label map on the
baseline grid with 0 background, 1 stable, 2 new, 3 vanishing. They run after the spatial and
intensity augmentation, before the targets are made, and draw from ``np.random`` as
batchgenerators' transforms do (the loader seeds it per worker).

- :class:`TimepointSwap` exchanges the timepoints and relabels new ↔ vanishing (stable stays).
- :class:`LesionPaste` copies a lesion from another sample of the batch into one timepoint
  only, as its contrast against the surrounding tissue added to the recipient's tissue, which
  synthesizes a new (pasted at follow-up) or vanishing (pasted at baseline) lesion.
- :class:`Misregistration` applies a small independent rigid jitter to the follow-up's
  channels, because real pairs are never perfectly registered; labels stay on the baseline grid.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

STABLE, NEW, VANISHING = 1, 2, 3


class TimepointSwap:
    """With probability ``p`` per sample, exchange the baseline and follow-up channels and swap
    labels new ↔ vanishing.

    Args:
        baseline, followup: Channel indices of each timepoint (equal lengths, paired in order).
        p: Probability per sample.
    """

    def __init__(self, baseline: Sequence[int], followup: Sequence[int], p: float = 0.5) -> None:
        if len(baseline) != len(followup) or not baseline:
            raise ValueError(f"timepoint swap needs as many baseline as follow-up channels, got {baseline}, {followup}")
        self.baseline, self.followup, self.p = list(baseline), list(followup), float(p)

    def __call__(self, **batch) -> dict:
        data, seg = batch["data"], batch["seg"]
        for i in range(data.shape[0]):
            if np.random.random() >= self.p:
                continue
            base = data[i, self.baseline].copy()
            data[i, self.baseline] = data[i, self.followup]
            data[i, self.followup] = base
            s = seg[i]
            new, vanishing = s == NEW, s == VANISHING
            s[new], s[vanishing] = VANISHING, NEW
        return batch


class Misregistration:
    """With probability ``p`` per sample, move the follow-up's channels by a small rigid transform.

    Args:
        followup: Channel indices of the follow-up.
        max_shift_voxels: Largest translation per axis, voxels (uniform in ±).
        max_rotation_deg: Largest rotation about each axis, degrees (uniform in ±).
        p: Probability per sample.
    """

    def __init__(self, followup: Sequence[int], max_shift_voxels: float = 1.0, max_rotation_deg: float = 1.5,
                 p: float = 0.5) -> None:
        self.followup, self.shift, self.rotation, self.p = (list(followup), float(max_shift_voxels),
                                                            float(max_rotation_deg), float(p))

    def matrix(self) -> tuple[np.ndarray, np.ndarray]:
        """A random rotation (3, 3) and shift (3,) in voxels, (z, y, x)."""
        a, b, c = np.deg2rad(np.random.uniform(-self.rotation, self.rotation, 3))
        rz = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
        ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
        rx = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
        return rz @ ry @ rx, np.random.uniform(-self.shift, self.shift, 3)

    def __call__(self, **batch) -> dict:
        data = batch["data"]
        centre = (np.asarray(data.shape[2:]) - 1) / 2
        for i in range(data.shape[0]):
            if np.random.random() >= self.p:
                continue
            rot, shift = self.matrix()
            offset = centre - rot @ centre + shift
            for ch in self.followup:
                data[i, ch] = ndimage.affine_transform(data[i, ch], rot, offset, order=1, mode="nearest")
        return batch


class LesionPaste:
    """With probability ``p`` per sample, paste a lesion of another sample into one timepoint.

    The donor is a stable lesion (a connected component of label 1, at least ``min_voxels``)
    of another sample in the batch. Its contrast per channel of the timepoint it is pasted
    into, ``donor − mean of a one-voxel shell around it`` (smoothed at the edge), is added to
    the recipient at a voxel whose shell intensity is closest to the donor's shell (same
    tissue), away from the recipient's own lesions. Pasted into the follow-up it becomes new
    (label 2); into the baseline, vanishing (label 3).

    Args:
        baseline, followup: Channel indices of each timepoint (paired in order).
        p: Probability per sample.
        p_new: Share of pastes that make a new lesion (the rest make vanishing ones).
        min_voxels: Smallest donor lesion.
        candidates: Recipient locations tried per paste (the best intensity match wins).
    """

    def __init__(self, baseline: Sequence[int], followup: Sequence[int], p: float = 0.3, p_new: float = 0.5,
                 min_voxels: int = 4, candidates: int = 64) -> None:
        self.baseline, self.followup = list(baseline), list(followup)
        self.p, self.p_new, self.min_voxels, self.candidates = float(p), float(p_new), int(min_voxels), int(candidates)

    def _donor(self, data: np.ndarray, seg: np.ndarray, exclude: int):
        order = [j for j in np.random.permutation(data.shape[0]) if j != exclude]
        for j in order:
            comps, n = ndimage.label(seg[j, 0] == STABLE)
            if n == 0:
                continue
            sizes = np.bincount(comps.ravel())[1:]
            ok = np.flatnonzero(sizes >= self.min_voxels) + 1
            if ok.size:
                return j, comps == int(ok[np.random.randint(ok.size)])
        return None

    def __call__(self, **batch) -> dict:
        data, seg = batch["data"], batch["seg"]
        if data.shape[0] < 2:
            return batch
        for i in range(data.shape[0]):
            if np.random.random() >= self.p:
                continue
            found = self._donor(data, seg, i)
            if found is not None:
                self._paste(data, seg, i, *found)
        return batch

    def _paste(self, data, seg, i, j, mask) -> None:
        box = ndimage.find_objects(mask.astype(np.int8))[0]
        box = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(box, mask.shape))
        m = mask[box]
        shell = ndimage.binary_dilation(m) & ~m
        if not shell.any():
            return
        new = np.random.random() < self.p_new
        channels = self.followup if new else self.baseline
        soft = ndimage.gaussian_filter(m.astype(np.float32), 0.5)
        contrast = [(data[j, ch][box] - data[j, ch][box][shell].mean()) * soft for ch in channels]
        ref_level = np.array([data[j, ch][box][shell].mean() for ch in channels])
        size = np.asarray(m.shape)
        space = np.asarray(seg.shape[2:]) - size
        if np.any(space < 0):
            return
        best, best_cost = None, np.inf
        lesions = seg[i, 0] > 0
        for _ in range(self.candidates):
            lo = np.random.randint(0, space + 1)
            where = tuple(slice(a, a + s) for a, s in zip(lo, size))
            if lesions[where][m].any():
                continue
            level = np.array([data[i, ch][where][shell].mean() for ch in channels])
            cost = float(np.abs(level - ref_level).sum())
            if cost < best_cost:
                best, best_cost = where, cost
        if best is None:
            return
        for ch, c in zip(channels, contrast):
            data[i, ch][best] += c
        seg[i, 0][best][m] = NEW if new else VANISHING
