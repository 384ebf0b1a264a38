import numpy as np
import pytest

from volseg.planning.memory import estimate_gflop, estimate_memory_gb
from volseg.planning.normalization import determine_normalization
from volseg.planning.patch import batch_size_for, fit_patch, initial_patch
from volseg.planning.spacing import determine_target_spacing
from volseg.planning.topology import determine_topology, total_stride

STATS = {"mean": -300.0, "std": 250.0, "p00_5": -1000.0, "p50": -500.0, "p99_5": 400.0, "min": -1024.0, "max": 3000.0}


def test_isotropic_spacing_is_the_median():
    spacing, aniso = determine_target_spacing([1.0, 0.8, 0.8], [0.9, 0.7, 0.7], [200, 250, 250])
    assert spacing == [1.0, 0.8, 0.8] and not aniso


def test_thick_slices_take_the_10th_percentile():
    # 5 mm slices vs 0.7 mm in-plane, and few slices: the thin-slice cases set the z spacing
    spacing, aniso = determine_target_spacing([5.0, 0.7, 0.7], [3.0, 0.6, 0.6], [40, 512, 512])
    assert aniso and spacing[0] == pytest.approx(3.0) and spacing[1:] == [0.7, 0.7]


def test_thick_slices_never_finer_than_in_plane():
    spacing, aniso = determine_target_spacing([5.0, 0.7, 0.7], [0.5, 0.6, 0.6], [40, 512, 512])
    assert aniso and spacing[0] == pytest.approx(0.7, rel=1e-4)


def test_anisotropic_spacing_with_many_slices_keeps_the_median():
    spacing, aniso = determine_target_spacing([3.0, 0.7, 0.7], [1.0, 0.6, 0.6], [300, 300, 300])
    assert not aniso and spacing[0] == 3.0


def test_ct_channel_gets_global_clip_and_zscore():
    norm = determine_normalization({"0": "CT"}, [STATS], 1.0)
    assert norm == [{"channel": 0, "scheme": "ct", "clip": [-1000.0, 400.0], "mean": -300.0, "std": 250.0}]


@pytest.mark.parametrize("kept,masked", [(1.0, False), (0.9, False), (0.5, True)])
def test_mr_channels_zscore_masked_when_cropping_removed_much(kept, masked):
    norm = determine_normalization({"0": "FLAIR", "1": "T1"}, [STATS, STATS], kept)
    assert [n["scheme"] for n in norm] == ["zscore", "zscore"]
    assert all(n["use_nonzero_mask"] is masked for n in norm)


def test_topology_pools_in_plane_first_for_thick_slices():
    strides, kernels = determine_topology([3.0, 0.75, 0.75], [32, 128, 128])
    assert strides[0] == [1, 1, 1] and strides[1] == [1, 2, 2] and strides[2] == [1, 2, 2]
    assert strides[3] == [2, 2, 2]
    assert kernels[0] == [1, 3, 3] and kernels[-1] == [3, 3, 3]
    # the bottleneck keeps at least 4 voxels per axis
    final = np.asarray([32, 128, 128]) // np.asarray(total_stride(strides))
    assert (final >= 4).all()


def test_topology_isotropic():
    strides, kernels = determine_topology([1.0, 1.0, 1.0], [128, 128, 128])
    assert len(strides) == 6 and all(s == [2, 2, 2] for s in strides[1:])
    assert all(k == [3, 3, 3] for k in kernels)


def test_initial_patch_is_isotropic_in_mm_and_clipped():
    patch = initial_patch([2.0, 1.0, 1.0], [1000, 1000, 1000])
    assert patch[1] == pytest.approx(2 * patch[0])
    assert initial_patch([1.0, 1.0, 1.0], [50, 60, 70]) == [50, 60, 70]


@pytest.mark.parametrize("budget", [2.0, 4.0, 8.0, 16.0])
def test_patch_fits_memory_budget(budget):
    spacing, shape = [1.0, 0.8, 0.8], [300.0, 400.0, 400.0]

    def fits(net, patch):
        return estimate_memory_gb(net, patch, 2, 1, 3, "cuda") <= budget

    patch, net = fit_patch(spacing, shape, fits)
    assert fits(net, patch)
    assert all(p % s == 0 for p, s in zip(patch, total_stride(net["strides"])))


def test_larger_budget_gives_larger_patch():
    spacing, shape = [1.0, 1.0, 1.0], [300.0, 300.0, 300.0]
    sizes = []
    for budget in (2.0, 4.0, 8.0):
        patch, _ = fit_patch(spacing, shape, lambda n, p, b=budget: estimate_memory_gb(n, p, 2, 1, 3, "cuda") <= b)
        sizes.append(np.prod(patch))
    assert sizes[0] < sizes[1] < sizes[2]


def test_gflop_budget_bounds_cpu_patch():
    spacing, shape = [1.0, 1.0, 1.0], [200.0, 200.0, 200.0]
    patch, net = fit_patch(spacing, shape, lambda n, p: estimate_gflop(n, p, 2, 1, 2) <= 30.0, base_features=16,
                           max_features=256)
    assert estimate_gflop(net, patch, 2, 1, 2) <= 30.0
    assert net["features_per_stage"][0] == 16


def test_batch_size_rules():
    assert batch_size_for(1.0, 1.0, 8.0, [64, 64, 64], [500, 500, 500], 100) == 7
    # few small cases: a batch may cover at most 5% of the dataset's voxels, but is at least 2
    assert batch_size_for(0.1, 0.0, 8.0, [64, 64, 64], [64, 64, 64], 10) == 2
