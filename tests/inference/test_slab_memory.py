"""Slab mode's memory: the bytes the engine allocates, counted op by op, stay within the slab
bound (K × patch extent × the two other sides, floats, plus a batch of tiles and the outputs)
and do not grow along the slab axis, z or y."""

import weakref

import pytest
import torch
from torch.utils._pytree import tree_flatten
from torch.utils._python_dispatch import TorchDispatchMode

from volseg.inference.sliding_window import predict_sliding_window

PATCH = (32, 32, 32)
YX = (64, 64)


class LiveBytes(TorchDispatchMode):
    """Counts the CPU bytes of every tensor storage that an op creates while it is live; ``peak``
    is the most held at once (storages made before the mode, e.g. the input, are not counted)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._seen: set[int] = set()

    def _free(self, key: int, n: int) -> None:
        self._seen.discard(key)
        self.live -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                storage = t.untyped_storage()
                key, n = storage.data_ptr(), storage.nbytes()
                if key and n and key not in self._seen and key not in inputs:  # new, not a view
                    self._seen.add(key)
                    self.live += n
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(t, self._free, key, n)
        return out


def _peak(k: int, shape: tuple[int, int, int], slab: bool) -> int:
    net = torch.nn.Conv3d(1, k, 1).eval()
    image = torch.randn(1, *shape)
    with LiveBytes() as counter:
        res = predict_sliding_window(net, image, PATCH, k, slab=slab, tile_batch=2)
    assert res.labels.shape == shape
    return counter.peak


def _shape(axis: int, length: int) -> tuple[int, int, int]:
    """An image ``length`` long along the slab axis, the other two sides those of ``YX``."""
    shape = [YX[0], *YX]  # a cube of side 64, then the slab axis lengthened
    shape[axis] = length
    return tuple(shape)


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("k", [2, 8, 32])
def test_slab_peak_is_bounded_by_the_slab_and_flat_along_its_axis(k, axis):
    from volseg.inference.dense import dense_aggregator

    cross = YX[0] * YX[1]  # the two other sides
    voxels = PATCH[0] * PATCH[1] * PATCH[2]
    slab_bytes = 4 * k * PATCH[axis] * cross  # the float accumulator of the slab: one patch extent
    batch = 4 * 2 * (1 + k) * voxels  # a batch of 2 tiles in (1 channel) and out (K channels)
    weights = 4 * voxels  # the Gaussian patch weight (one member: no second, divided copy)
    argmax = (4 + 8) * PATCH[axis] * cross  # max values and int64 indices of the last block (one patch extent)
    peaks = {}
    for length in (96, 192):
        shape = _shape(axis, length)
        assert dense_aggregator(k, shape, PATCH).row_axis == axis  # the longer side carries the slab
        outputs = length * cross  # uint8 labels
        peaks[length] = _peak(k, shape, slab=True)
        assert peaks[length] <= 1.05 * (slab_bytes + batch + weights + argmax) + outputs, (length, peaks[length])
    assert peaks[192] - peaks[96] <= 96 * cross * 1.01  # the labels of 96 more slices only
    full = _peak(k, _shape(axis, 192), slab=False)
    assert full >= 4 * k * 192 * cross  # the counter sees the full accumulator
