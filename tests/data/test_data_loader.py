import random

import numpy as np
import pytest
import torch

from volseg.data.augmentation import default_augmentation, no_intensity_augmentation
from volseg.data.loader import batch_seeds, make_loader

PATCH = [16, 16, 16]
SCALES = [[1, 1, 1], [0.5, 0.5, 0.5]]


def _params():
    return default_augmentation(PATCH, [1.0, 1.0, 1.0])


def _take(loader, n):
    return [next(loader) for _ in range(n)]


def test_in_process_loader_is_deterministic(cases):
    state, py_state = np.random.get_state(), random.getstate()
    with make_loader(cases, PATCH, 3, _params(), SCALES, num_workers=0, seed=5) as a, \
            make_loader(cases, PATCH, 3, _params(), SCALES, num_workers=0, seed=5) as b, \
            make_loader(cases, PATCH, 3, _params(), SCALES, num_workers=0, seed=6) as c:
        for x, y, z in zip(_take(a, 4), _take(b, 4), _take(c, 4)):
            assert torch.equal(x["data"], y["data"]) and x["keys"] == y["keys"]
            assert all(torch.equal(s, t) for s, t in zip(x["target"], y["target"]))
        assert not torch.equal(x["data"], z["data"])
    assert np.array_equal(np.random.get_state()[1], state[1]) and random.getstate() == py_state  # untouched


def test_batches_and_forced_foreground(cases):
    with make_loader(cases, PATCH, 3, _params(), SCALES, num_workers=0, seed=0) as loader:
        for batch in _take(loader, 20):
            assert batch["data"].shape == (3, 2, 16, 16, 16) and batch["data"].dtype == torch.float32
            assert [tuple(t.shape) for t in batch["target"]] == [(3, 1, 16, 16, 16), (3, 1, 8, 8, 8)]
            assert batch["target"][0][-1].any()  # the last sample is forced to hold foreground


def test_validation_loader_does_not_augment(cases):
    with make_loader(cases, PATCH, 2, _params(), None, training=False, num_workers=0, seed=0) as loader:
        for batch in _take(loader, 10):
            assert torch.equal(batch["data"][:, 0], batch["data"][:, 1])  # no per-channel intensity change
            assert isinstance(batch["target"], torch.Tensor) and batch["target"][-1].any()


def test_ddp_ranks_draw_different_batches(cases):
    kw = dict(augmentation=_params(), num_workers=0, seed=0, world_size=2)
    with make_loader(cases, PATCH, 4, rank=0, **kw) as r0, make_loader(cases, PATCH, 4, rank=1, **kw) as r1:
        b0, b1 = next(r0), next(r1)
    assert b0["data"].shape[0] == b1["data"].shape[0] == 2
    assert not torch.equal(b0["data"], b1["data"])


def test_batch_seeds_differ_by_rank_loader_and_index():
    seeds = {tuple(batch_seeds(0, r, t, g)) for r in range(2) for g in range(3) for t in (True, False)}
    assert len(seeds) == 12


def _same(xs, ys):
    return all(torch.equal(x["data"], y["data"]) and x["keys"] == y["keys"]
               and all(torch.equal(s, t) for s, t in zip(x["target"], y["target"])) for x, y in zip(xs, ys))


def test_batches_do_not_depend_on_the_worker_count(cases):
    def batches(workers):
        with make_loader(cases, PATCH, 2, _params(), SCALES, num_workers=workers, seed=3, num_cached=1) as loader:
            return _take(loader, 5)

    in_process = batches(0)
    assert _same(in_process, batches(2)) and _same(in_process, batches(3))
    assert not torch.equal(in_process[0]["data"], in_process[1]["data"])


@pytest.mark.parametrize("workers", [0, 2])
def test_seek_continues_the_stream_at_a_batch(cases, workers):
    """What a resumed training run relies on: seek(k) gives batches k, k+1, … of the stream."""
    with make_loader(cases, PATCH, 2, _params(), SCALES, num_workers=workers, seed=4, num_cached=1) as loader:
        whole = _take(loader, 6)
        loader.seek(2)  # running workers are restarted
        again = _take(loader, 4)
    with make_loader(cases, PATCH, 2, _params(), SCALES, num_workers=workers, seed=4, num_cached=1) as fresh:
        fresh.seek(3)  # before the workers start
        late = _take(fresh, 3)
    assert _same(whole[2:], again) and _same(whole[3:], late)
    with pytest.raises(ValueError, match="≥ 0"):
        loader.seek(-1)


def test_multiprocess_loader_yields_and_closes(cases):
    params = no_intensity_augmentation(_params())
    loader = make_loader(cases, PATCH, 2, params, SCALES, num_workers=2, seed=0, num_cached=1)
    with loader:
        batches = _take(loader, 6)
        workers = list(loader._augmenter._processes)
        assert len(workers) == 2 and all(p.is_alive() for p in workers)
        assert {p.pid for p in workers}.isdisjoint({None})
    assert all(not p.is_alive() for p in workers)
    for b in batches:
        assert b["data"].shape == (2, 2, 16, 16, 16) and b["target"][1].shape == (2, 1, 8, 8, 8)
        assert torch.equal(b["data"][:, 0], b["data"][:, 1])
    # batches alternate between the two workers, which must not repeat each other
    assert not torch.equal(batches[0]["data"], batches[1]["data"])
    with pytest.raises(RuntimeError, match="closed"):
        next(loader)
    loader.close()  # idempotent


def test_wait_time_is_measured(cases):
    with make_loader(cases, PATCH, 2, _params(), None, num_workers=0) as loader:
        assert loader.wait_time == 0.0
        _take(loader, 3)
        assert loader.wait_time > 0 and loader.batches == 3
        waited = loader.wait_time
        assert loader.reset_wait_time() == waited
        assert loader.wait_time == 0.0 and loader.batches == 0


def test_bad_worker_count(cases):
    with pytest.raises(ValueError, match="num_workers"):
        make_loader(cases, PATCH, 2, None, num_workers=-1)


def test_multiprocess_loader_is_reproducible(cases):
    def first_batches():
        with make_loader(cases, PATCH, 2, _params(), None, num_workers=2, seed=9, num_cached=1) as loader:
            return _take(loader, 4)

    for x, y in zip(first_batches(), first_batches()):
        assert torch.equal(x["data"], y["data"]) and torch.equal(x["target"], y["target"])


def test_loader_default_oversampling_is_the_samplers():
    import inspect

    from volseg.data.sampling import FOREGROUND_OVERSAMPLING

    assert inspect.signature(make_loader).parameters["foreground_oversampling"].default is FOREGROUND_OVERSAMPLING
