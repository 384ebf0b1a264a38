"""Dense tile aggregation: Gaussian-weighted logits, normalized and finalized.

The ensemble members of a batch of tiles (networks × mirrorings) are flipped back and
averaged as logits, then weighted by a separable Gaussian and accumulated
(:mod:`volseg.kernels.accumulate`); at the end they are normalized and finalized in one pass
(:mod:`volseg.kernels.finalize`).

Uncertainty (``return_uncertainty``): besides the max probability and the predictive entropy
of the averaged logits, every member's softmax (or sigmoid) probabilities and entropy are summed
over the members of each tile (tile-sized sums, nothing per member is kept); at commit they
give the tile's expected entropy E_m[H(p_m)] and mutual information H(E_m p_m) - E_m[H(p_m)],
accumulated as 2 extra channels after the K logits (the accumulator then has K + 2 channels).
After normalization each of the two maps is the Gaussian-weighted mean, over the tiles
covering a voxel, of the tile-local value. Without uncertainty nothing of this runs.

Memory: in full mode the accumulator is K × Z × Y × X fp32 (K + 2 channels with
uncertainty, plus, per batch of tiles, one more tile-sized Σ_m p_m of K channels). In slab
mode the tiles come row by row along one axis (the slab axis, z or y), and the accumulator
holds one patch extent of slices along it: whenever the next row starts further, the slices
before it can receive nothing more and are finalized and released. The slab axis is the one
whose patch extent is the smallest fraction of the image (:func:`slab_axis`), so that the
slab, K × patch extent × the other two sides, is the smallest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from volseg.kernels.accumulate import (accumulate_torch, accumulate_triton, add_member_torch, add_member_triton,
                                       member_entropy_terms)
from volseg.kernels.finalize import Finalized, allocate_outputs, finalize, normalize_torch
from volseg.kernels.gaussian import gaussian_1d, normalizer_1d, patch_weight
from volseg.tasks.base import TileGrid


@dataclass
class SlidingWindowResult:
    """Outputs on the (unpadded) input grid, on the CPU.

    Attributes:
        labels: uint8 (Z, Y, X) argmax (softmax mode), else ``None``.
        probabilities: fp16 (K, Z, Y, X) or ``None``.
        max_prob: fp16 (Z, Y, X) or ``None``.
        entropy: fp16 (Z, Y, X) in nats, or ``None``: predictive entropy, of the averaged logits.
        expected_entropy: (Z, Y, X) nats, E_m[H(p_m)] over the ensemble members m (networks ×
            mirrorings; aleatoric part), with uncertainty only, else ``None``. fp16, except with
            ``logits``, where it is the view ``logits[K]`` (same dtype as the logits).
        mutual_information: (Z, Y, X) nats, >= 0, H(E_m[p_m]) - E_m[H(p_m)] (epistemic part, BALD),
            with uncertainty only; fp16, or the view ``logits[K + 1]`` with ``logits``.
        logits: averaged logits (K, Z, Y, X) (fp32 in full mode, fp16 in slab mode) when asked for;
            with uncertainty (K + 2, Z, Y, X): channels K and K + 1 hold the normalized expected
            entropy and mutual information, to be resampled with the logits
            (:func:`volseg.inference.restore.resample_and_finalize` with ``member_terms=True``).
        timings: seconds: ``network`` (forward passes only) and ``total``.
    """

    labels: torch.Tensor | None
    probabilities: torch.Tensor | None = None
    max_prob: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    timings: dict = field(default_factory=dict)
    expected_entropy: torch.Tensor | None = None
    mutual_information: torch.Tensor | None = None


class DenseAggregator:
    """Averaged, Gaussian-weighted logits of K channels over the whole image.

    Args:
        num_classes: K, output channels of the networks.
        sigma_scale: Gaussian σ as a fraction of the patch.
        use_triton: Accumulate and finalize with the Triton kernels (else torch).
        mode: "softmax" or "sigmoid".
        return_probabilities, return_uncertainty: Also keep fp16 probability / max-probability
            and entropy maps; uncertainty adds the members' expected entropy and mutual
            information (2 more accumulator channels, one softmax per member and tile).
        return_logits: Keep the averaged logits instead of finalizing (no labels); with
            uncertainty, followed by the 2 member-term channels.
        slab: Slab mode (bounded memory, tiles row by row along ``axis``) instead of one full
            accumulator.
        gaussian_center: Where the tile weights peak (:data:`volseg.kernels.gaussian.GAUSSIAN_CENTERS`).
        axis: The slab axis, 0 (z) or 1 (y); the Triton kernels take z only.

    Raises:
        ValueError: ``axis`` is not 0 or 1, or 1 with the Triton kernels.
    """

    def __init__(self, num_classes: int, sigma_scale: float = 0.125, use_triton: bool = False,
                 mode: str = "softmax", return_probabilities: bool = False, return_uncertainty: bool = False,
                 return_logits: bool = False, slab: bool = False, gaussian_center: str = "middle",
                 axis: int = 0) -> None:
        if axis not in (0, 1) or (axis == 1 and use_triton):
            raise ValueError(f"slab axis: expected 0 (z){'' if use_triton else ' or 1 (y)'}, found {axis!r}")
        self.row_axis = int(axis)
        self.k, self.sigma_scale, self.triton, self.mode = num_classes, sigma_scale, use_triton, mode
        self.gaussian_center = gaussian_center
        self.probs, self.unc, self.logits, self.row_wise = return_probabilities, return_uncertainty, return_logits, slab
        self.backend = "triton" if use_triton else "torch"
        self.terms = bool(return_uncertainty)  # member terms: 2 more channels after the K logits
        self.channels = num_classes + 2 if self.terms else num_classes
        self._total: torch.Tensor | None = None
        self._sum_p: torch.Tensor | None = None

    def setup(self, grid: TileGrid) -> None:
        self.grid = grid
        self.w = [gaussian_1d(p, self.sigma_scale, grid.device, self.gaussian_center) for p in grid.patch]
        self.norms = [normalizer_1d(s, st, wi) for s, st, wi in zip(grid.shape, grid.starts, self.w)]
        self.weight = None if self.triton else patch_weight(*self.w)
        self.weight_mean = None  # for the member-mean logits (the weight itself for one member)
        if self.weight is not None:
            self.weight_mean = self.weight if grid.members == 1 else self.weight / grid.members
        shape = list(grid.shape)
        if self.row_wise:
            self.outs = self._alloc_cpu(grid.shape)
            shape[self.row_axis] = grid.patch[self.row_axis]
        self.acc = torch.zeros((self.channels, *shape), dtype=torch.float32, device=grid.device)
        self.lo = 0  # start, along the slab axis, of the accumulator's first slice

    def start_row(self, start: int) -> None:
        if self.row_wise and start > self.lo:  # slices lo..start-1 are complete: finalize and shift the buffer
            dim, shift = 1 + self.row_axis, start - self.lo
            self._emit(self.acc.narrow(dim, 0, shift), self.lo)
            keep = self.grid.patch[self.row_axis] - shift
            for i in range(keep):  # slice by slice towards the front: no copy of the buffer
                self.acc.select(dim, i).copy_(self.acc.select(dim, i + shift))
            self.acc.narrow(dim, keep, shift).zero_()
            self.lo = start

    def add(self, output, offsets: Sequence[tuple[int, int, int]], flip_dims: Sequence[int]) -> None:
        out = output[0] if isinstance(output, (list, tuple)) else output
        out = torch.flip(out, list(flip_dims)) if flip_dims else out
        if not self.terms:
            self._total = out.float() if self._total is None else self._total.add_(out.float())
            return
        if out.shape[1] != self.k:
            raise ValueError(f"expected network outputs of {self.k} channels, found shape {tuple(out.shape)}")
        if self._total is None:  # logits sum, Σ_m H(p_m), (MI at commit); Σ_m p_m
            self._total = torch.zeros((out.shape[0], self.k + 2, *out.shape[2:]), dtype=torch.float32,
                                      device=out.device)
            self._sum_p = torch.zeros((out.shape[0], self.k, *out.shape[2:]), dtype=torch.float32, device=out.device)
        (add_member_triton if self.triton else add_member_torch)(self._total, self._sum_p, out, self.mode)

    def commit(self, offsets: Sequence[tuple[int, int, int]]) -> None:
        tiles, self._total = self._total, None
        if self.terms:
            sum_p, self._sum_p = self._sum_p, None
            eh, mi = member_entropy_terms(sum_p, tiles[:, self.k], self.grid.members, self.mode)
            tiles[:, :self.k] /= self.grid.members
            tiles[:, self.k] = eh
            tiles[:, self.k + 1] = mi
        a, lo = self.row_axis, self.lo
        local = [tuple(c - lo if i == a else c for i, c in enumerate(o)) for o in offsets]
        if self.triton:
            if not self.terms:
                tiles /= self.grid.members
            accumulate_triton(self.acc, tiles, local, *self.w)
        else:  # the mean over members rides on the weight: one pass over the tiles
            accumulate_torch(self.acc, tiles, local, self.weight if self.terms else self.weight_mean)

    def finish(self) -> SlidingWindowResult:
        if self.row_wise:
            self._emit(self.acc.narrow(1 + self.row_axis, 0, self.grid.shape[self.row_axis] - self.lo), self.lo)
            out = self.outs
        else:
            res = self._finalize(self.acc, self.norms)
            if self.logits:
                out = {"logits": res.cpu()}
            else:
                out = {f: (getattr(res, f).cpu() if getattr(res, f) is not None else None) for f in _FIELDS}
        res = _crop(out, self.grid.pads)
        if self.logits and self.terms:
            res.expected_entropy, res.mutual_information = res.logits[self.k], res.logits[self.k + 1]
        return res

    def _finalize(self, acc: torch.Tensor, norms: Sequence[torch.Tensor]) -> Finalized | torch.Tensor:
        if self.logits:
            return normalize_torch(acc, *norms)
        return finalize(acc, *norms, self.mode, self.probs, self.unc, self.backend, self.terms)

    def _alloc_cpu(self, shape) -> dict:
        if self.logits:
            return {"logits": torch.empty((self.channels, *shape), dtype=torch.float16)}
        res = allocate_outputs(self.k, shape, "cpu", self.mode, self.probs, self.unc, self.terms)
        return {f: getattr(res, f) for f in _FIELDS}

    def _emit(self, block: torch.Tensor, start: int) -> None:
        """Finalize the complete slices ``block`` (a view of the buffer, which they leave: it
        may be normalized in place) into the outputs at ``start`` along the slab axis."""
        a = self.row_axis
        n = block.shape[1 + a]
        norms = [nv[start:start + n] if i == a else nv for i, nv in enumerate(self.norms)]
        res = self._finalize(block, norms)
        if self.logits:
            self.outs["logits"].narrow(1 + a, start, n).copy_(res)
            return
        for f, v in self.outs.items():
            if v is not None:
                v.narrow(v.ndim - 3 + a, start, n).copy_(getattr(res, f))


_FIELDS = ("labels", "probabilities", "max_prob", "entropy", "expected_entropy", "mutual_information")


def _crop(out: dict, pads: list[tuple[int, int]]) -> SlidingWindowResult:
    sl = tuple(slice(a, None if b == 0 else -b) for a, b in pads)
    crop = {k: (v[(Ellipsis, *sl)].contiguous() if v is not None else None) for k, v in out.items()}
    return SlidingWindowResult(logits=crop.get("logits"), **{f: crop.get(f) for f in _FIELDS})


DEFAULT_MEMORY_BUDGET = 4 * 1024 ** 3


def slab_axis(image_shape: Sequence[int], patch_size: Sequence[int], axes: Sequence[int] = (0, 1)) -> int:
    """The axis among ``axes`` whose patch extent is the smallest fraction of the (padded) image,
    so that a slab of one patch extent along it, K × patch × the other two sides, is the smallest
    (ties: the lower axis). Shapes are (z, y, x), voxels."""
    padded = [max(int(s), int(p)) for s, p in zip(image_shape, patch_size)]
    return min(axes, key=lambda a: (int(patch_size[a]) / padded[a], a))


def dense_aggregator(num_classes: int, image_shape: Sequence[int], patch_size: Sequence[int],
                     sigma_scale: float = 0.125, backend: str = "auto", device: torch.device | str = "cpu",
                     mode: str = "softmax", return_probabilities: bool = False, return_uncertainty: bool = False,
                     return_logits: bool = False, slab: bool | None = None,
                     memory_budget_bytes: int | None = None, gaussian_center: str = "middle") -> DenseAggregator:
    """A :class:`DenseAggregator` for an image of spatial ``image_shape`` (z, y, x), choosing the
    backend ("auto": Triton on CUDA when installed), the slab axis (:func:`slab_axis`; z only with
    the Triton kernels) and slab mode (``None``: on the CPU whenever the image is at least two
    patches long along that axis and finalized outputs are asked for, since slab mode is as fast
    there and holds one patch extent of slices instead of the volume; otherwise when the full fp32
    accumulator over the padded image, K channels or K + 2 with ``return_uncertainty``, would
    exceed ``memory_budget_bytes``, default 4 GiB)."""
    from volseg.kernels.finalize import triton_available

    device = torch.device(device)
    padded = [max(int(s), int(p)) for s, p in zip(image_shape, patch_size)]
    use_triton = backend == "triton" or (backend == "auto" and device.type == "cuda" and triton_available())
    budget = DEFAULT_MEMORY_BUDGET if memory_budget_bytes is None else memory_budget_bytes
    channels = num_classes + 2 if return_uncertainty else num_classes
    axis = slab_axis(padded, patch_size, (0,) if use_triton else (0, 1))
    if slab is None:
        long = padded[axis] >= 2 * int(patch_size[axis])
        slab = (device.type == "cpu" and long and not return_logits) or \
            4 * channels * padded[0] * padded[1] * padded[2] > budget
    return DenseAggregator(num_classes, sigma_scale, use_triton, mode, return_probabilities, return_uncertainty,
                           return_logits, slab, gaussian_center, axis)
