"""Slab mode's memory: the bytes the engine allocates, counted op by op, stay within the slab
bound (K × (patch depth + step) × Y × X floats plus outputs) and do not grow with Z."""

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


def _peak(k: int, z: int, slab: bool) -> int:
    net = torch.nn.Conv3d(1, k, 1).eval()
    image = torch.randn(1, z, *YX)
    with LiveBytes() as counter:
        res = predict_sliding_window(net, image, PATCH, k, slab=slab, tile_batch=2)
    assert res.labels.shape == (z, *YX)
    return counter.peak


@pytest.mark.parametrize("k", [2, 8, 32])
def test_slab_peak_is_bounded_by_the_slab_and_flat_in_z(k):
    step = PATCH[0] // 2
    voxels = PATCH[0] * PATCH[1] * PATCH[2]
    slab_bytes = 4 * k * (PATCH[0] + step) * YX[0] * YX[1]  # the float accumulator of the slab
    batch = 4 * 2 * (1 + k) * voxels  # a batch of 2 tiles in (1 channel) and out (K channels)
    weights = 2 * 4 * voxels  # the Gaussian patch weight, and the same divided by the members
    argmax = (4 + 8) * step * YX[0] * YX[1]  # max values and int64 indices of the slices finalized at once
    peaks = {}
    for z in (96, 192):
        outputs = z * YX[0] * YX[1]  # uint8 labels
        peaks[z] = _peak(k, z, slab=True)
        assert peaks[z] <= 1.1 * (slab_bytes + batch + weights + argmax) + outputs, (z, peaks[z])
    assert peaks[192] - peaks[96] <= 96 * YX[0] * YX[1] * 1.01  # the labels of 96 more slices only
    full = _peak(k, 192, slab=False)
    assert full >= 4 * k * 192 * YX[0] * YX[1]  # the counter sees the full accumulator
