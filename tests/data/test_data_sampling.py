import numpy as np
import pytest

from volseg.data.sampling import PatchSampler, forced_foreground, read_box, split_batch

PATCH = (16, 16, 16)


def test_split_batch():
    assert split_batch(5, 2) == [3, 2]
    assert split_batch(4, 4) == [1, 1, 1, 1]
    with pytest.raises(ValueError, match="smaller than the number of ranks"):
        split_batch(1, 2)


@pytest.mark.parametrize("batch, expected", [(1, [False]), (2, [False, True]), (3, [False, False, True]),
                                             (4, [False, False, False, True]), (5, [False] * 3 + [True] * 2)])
def test_forced_foreground_follows_nnunet_rounding(batch, expected):
    assert forced_foreground(batch, 0.33) == expected


def test_forced_foreground_split_over_ranks():
    # global batch of 4: the forced last sample lands on the last rank
    assert forced_foreground(4, 0.33, rank=0, world_size=2) == [False, False]
    assert forced_foreground(4, 0.33, rank=1, world_size=2) == [False, True]
    assert forced_foreground(4, 0.5, rank=1, world_size=2) == [True, True]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        forced_foreground(2, 1.5)


def test_foreground_oversampling_default_is_the_one_the_planner_writes():
    import inspect

    from volseg.data.sampling import FOREGROUND_OVERSAMPLING
    from volseg.planning.planner import _configuration

    default = inspect.signature(PatchSampler).parameters["foreground_oversampling"].default
    assert default is FOREGROUND_OVERSAMPLING
    net = {"strides": [[1, 1, 1], [2, 2, 2]]}
    cfg = _configuration([1.0] * 3, [16] * 3, [16] * 3, 2, net, "cpu", 8.0, 1.0, 1.0,
                         {"epochs": 1, "iterations_per_epoch": 1, "val_iterations": 0, "num_workers": 0})
    assert cfg["training"]["foreground_oversampling"] is FOREGROUND_OVERSAMPLING


def test_read_box_pads_with_zero():
    a = np.arange(2 * 4 * 4 * 4, dtype=np.float32).reshape(2, 4, 4, 4) + 1
    box = read_box(a, (-2, 1, 3), (2, 3, 6))
    assert box.shape == (2, 4, 2, 3)
    np.testing.assert_array_equal(box[:, 2:, :, :1], a[:, :2, 1:3, 3:])
    assert box[:, :2].sum() == 0 and box[:, :, :, 1:].sum() == 0


def test_sample_shapes_and_dtypes(cases):
    sampler = PatchSampler(cases, PATCH, batch_size=3, sample_size=(20, 24, 16), seed=0)
    batch = sampler.sample()
    assert batch["data"].shape == (3, 2, 20, 24, 16) and batch["data"].dtype == np.float32
    assert batch["seg"].shape == (3, 1, 20, 24, 16) and batch["seg"].dtype == np.int16
    assert len(batch["keys"]) == 3 and set(batch["keys"]) <= {"case_000", "case_001", "case_002"}
    windows = sampler.sample_windows()
    assert len(windows["windows"]) == 3 and len(windows["keys"]) == 3


def test_sample_size_must_enclose_patch_evenly(cases):
    with pytest.raises(ValueError, match="even difference"):
        PatchSampler(cases, PATCH, 2, sample_size=(17, 16, 16))
    with pytest.raises(ValueError, match="even difference"):
        PatchSampler(cases, PATCH, 2, sample_size=(14, 16, 16))


def test_forced_samples_contain_foreground(cases):
    sampler = PatchSampler(cases, PATCH, batch_size=3, sample_size=(24, 24, 24), seed=3)
    for _ in range(60):
        seg = sampler.sample()["seg"]
        assert seg[-1, :, 4:20, 4:20, 4:20].any()  # the final (centre) patch of the forced sample


def test_uniform_samples_stay_inside_the_volume(cases):
    sampler = PatchSampler(cases, PATCH, batch_size=1, foreground_oversampling=0.0, seed=0)
    lowers = np.array([sampler.draw_location(cases[0], False)[0] for _ in range(500)])
    assert lowers.min() == 0 and lowers.max() == 40 - 16
    assert not sampler.probabilistic and sampler.forced == [False]


def test_classes_balanced_among_present_classes(cases):
    sampler = PatchSampler(cases, PATCH, batch_size=2, seed=1)
    values = [sampler.draw_location(cases[0], True)[1] for _ in range(2000)]
    share_small = np.mean(np.asarray(values) == 2)
    assert 0.4 < share_small < 0.6  # label 2 has ~30x fewer voxels than label 1, yet half the draws
    assert {sampler.draw_location(cases[2], True)[1] for _ in range(50)} == {1}  # case_002 has label 1 only


def test_forced_voxel_lies_in_patch_even_at_borders(cases):
    sampler = PatchSampler(cases, (30, 30, 30), batch_size=1, seed=0)
    for _ in range(200):
        lower, value = sampler.draw_location(cases[1], True)
        image, seg = sampler.crop(cases[1], lower)
        assert (seg == value).any()
        assert np.all(lower >= 0) and np.all(lower <= 10)


def test_batch_of_one_oversamples_with_probability(cases):
    sampler = PatchSampler(cases, PATCH, batch_size=1, foreground_oversampling=0.33, seed=0)
    assert sampler.probabilistic
    hits = [sampler.sample()["seg"].any() for _ in range(200)]
    assert 0.33 < np.mean(hits) < 0.9  # forced a third of the time, plus uniform hits


def test_patch_larger_than_volume_is_zero_padded(cases):
    sampler = PatchSampler(cases, (48, 40, 36), batch_size=2, seed=0)
    batch = sampler.sample()
    assert batch["data"].shape == (2, 2, 48, 40, 36)
    assert np.all(batch["data"][:, :, :4] == 0) and np.all(batch["data"][:, :, -4:] == 0)
    assert np.all(batch["data"][:, :, 4:-4] != 0)


def test_same_seed_same_batches_other_seed_differs(cases):
    a, b, c = (PatchSampler(cases, PATCH, 3, seed=s) for s in (7, 7, 8))
    for _ in range(3):
        ba, bb, bc = a.sample(), b.sample(), c.sample()
        np.testing.assert_array_equal(ba["data"], bb["data"])
        assert ba["keys"] == bb["keys"]
    assert not np.array_equal(ba["data"], bc["data"])


def test_ddp_ranks_draw_different_patches(cases):
    r0 = PatchSampler(cases, PATCH, 5, seed=0, rank=0, world_size=2)
    r1 = PatchSampler(cases, PATCH, 5, seed=0, rank=1, world_size=2)
    assert (r0.batch_size, r1.batch_size) == (3, 2)
    assert r0.forced == [False, False, False] and r1.forced == [True, True]
    d0 = np.concatenate([r0.sample()["data"][:2] for _ in range(4)])
    d1 = np.concatenate([r1.sample()["data"] for _ in range(4)])
    assert not any(np.array_equal(x, y) for x in d0 for y in d1)
    with pytest.raises(ValueError, match="rank"):
        PatchSampler(cases, PATCH, 4, rank=2, world_size=2)


def test_worker_streams_differ(cases):
    sampler = PatchSampler(cases, PATCH, 2, seed=0)
    sampler.set_stream(0)
    a = sampler.sample()["data"]
    sampler.set_stream(1)
    b = sampler.sample()["data"]
    sampler.set_stream(0)
    np.testing.assert_array_equal(sampler.sample()["data"], a)
    assert not np.array_equal(a, b)


def test_random_offset_places_the_forced_voxel_anywhere_in_the_middle_half():
    """Detection sampling: a random instance at a random offset, not always at the patch centre."""
    from volseg.data.sampling import PatchSampler

    class _Case:
        shape = (64, 64, 64)
        class_locations = {1: np.array([[32, 32, 32]])}

    offsets = []
    for random_offset in (False, True):
        sampler = PatchSampler([_Case()], (16, 16, 16), 2, seed=1, random_offset=random_offset)
        offsets.append({tuple(32 - sampler.draw_location(_Case(), True)[0]) for _ in range(50)})
    assert offsets[0] == {(8, 8, 8)}
    assert len(offsets[1]) > 10 and all(4 <= v < 12 for o in offsets[1] for v in o)


def test_class_weights_set_the_odds_of_forced_samples():
    from types import SimpleNamespace

    case = SimpleNamespace(shape=(32, 32, 32), class_locations={1: np.array([[4, 4, 4]]), 2: np.array([[20, 20, 20]])})
    stub = SimpleNamespace(num_channels=1)
    sampler = PatchSampler([stub], (8, 8, 8), batch_size=2, class_weights={1: 1.0, 2: 9.0})
    chosen = [sampler.draw_location(case, True)[1] for _ in range(2000)]
    assert 0.85 < chosen.count(2) / len(chosen) < 0.95
    uniform = PatchSampler([stub], (8, 8, 8), batch_size=2)
    chosen = [uniform.draw_location(case, True)[1] for _ in range(2000)]
    assert 0.4 < chosen.count(2) / len(chosen) < 0.6
    with pytest.raises(ValueError, match="positive"):
        PatchSampler([stub], (8, 8, 8), batch_size=2, class_weights={1: 0.0})
