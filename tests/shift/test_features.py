"""Bottleneck features: the probe, the shrunk Mahalanobis reference, and its weights-only file."""

import numpy as np
import pytest
import torch

from volseg.errors import ModelError
from volseg.shift.features import FeatureProbe, FeatureReference, ledoit_wolf, tile_features


def _net():
    from volseg.networks.unet import UNet

    torch.manual_seed(0)
    return UNet(in_channels=1, num_outputs=2, features_per_stage=[4, 8], kernel_sizes=[[3, 3, 3]] * 2,
                strides=[[1, 1, 1], [2, 2, 2]], n_conv_per_stage=[1, 1], n_conv_per_stage_decoder=[1]).eval()


def test_ledoit_wolf_is_positive_definite_with_fewer_samples_than_features():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(10, 40))
    cov, w = ledoit_wolf(z - z.mean(0))
    assert 0 < w <= 1 and np.linalg.eigvalsh(cov).min() > 0
    scales = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    big = rng.normal(size=(20000, 5)) * scales  # far from spherical, many samples: little shrinkage
    cov, w = ledoit_wolf(big - big.mean(0))
    assert w < 0.01 and np.allclose(np.diag(cov), scales ** 2, rtol=0.05)
    sphere = rng.normal(size=(20000, 5))  # the truth is the target: shrink almost fully
    assert ledoit_wolf(sphere - sphere.mean(0))[1] > 0.5


def test_reference_distance_is_about_one_in_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(1)
    mix = rng.normal(size=(6, 6))
    train = rng.normal(size=(400, 6)) @ mix + 3.0
    ref = FeatureReference.fit(train)
    same = ref.distances(rng.normal(size=(400, 6)) @ mix + 3.0)
    assert 0.8 < same.mean() < 1.2
    assert ref.score(rng.normal(size=(50, 6)) @ mix + 6.0) > 2 * same.mean()
    with pytest.raises(ValueError):
        FeatureReference.fit(train[:1])


def test_reference_file_round_trips_and_a_pickle_is_refused(tmp_path):
    ref = FeatureReference.fit(np.random.default_rng(2).normal(size=(30, 4)))
    back = FeatureReference.load(ref.save(tmp_path / "shift_features.pt"))
    assert np.array_equal(back.precision, ref.precision) and back.tiles == 30
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ModelError, match="evil.pt"):
        FeatureReference.load(tmp_path / "evil.pt")


def test_probe_keeps_the_unmirrored_pass_of_every_tile_only():
    from volseg.inference.sliding_window import predict_sliding_window, run_sliding_window
    from volseg.inference.dense import dense_aggregator

    nets = [_net(), _net()]
    image = torch.randn(1, 24, 20, 20)
    agg = dense_aggregator(2, image.shape[1:], (16, 16, 16), 0.125, "torch", torch.device("cpu"), "softmax",
                           False, False, False, None, None)
    with FeatureProbe(nets) as probe:
        run_sliding_window(nets, image, (16, 16, 16), agg, 0.5, mirror_axes=(0, 1, 2), tile_batch=3, probe=probe)
    tiles = 2 * 2 * 2  # tile starts per axis for 24 / 20 / 20 with patch 16, step 8
    feats = probe.features
    assert [f.shape for f in feats] == [(tiles, 16), (tiles, 16)]  # 2 × 8 bottleneck channels: mean, std
    again = tile_features(nets[0], image, (16, 16, 16), 0.5, None, np.random.default_rng(0))
    assert np.allclose(np.sort(again, axis=0), np.sort(feats[0], axis=0), atol=1e-5)
    # the hooks are gone: predicting again records nothing
    predict_sliding_window(nets[0], image, (16, 16, 16), 2)
    assert probe.features[0].shape == (tiles, 16)
