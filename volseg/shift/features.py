"""Bottleneck features of the sliding-window tiles, and their Mahalanobis distance to training tiles.

:class:`FeatureProbe` hooks the input of the first decoder up-sampling of each network (the
deepest encoder features; fused across timepoints for the siamese change network) and keeps,
per tile, the mean and standard deviation over space of every channel: a (2 C,) vector. Only
the unmirrored pass of each tile is kept. :func:`fit_feature_reference` runs a fold's network
over random sliding-window tiles of its training cases and summarizes their vectors as a mean
and a Ledoit–Wolf shrunk covariance of the standardized features (:class:`FeatureReference`,
``fold_K/shift_features.pt``, tensors only). A case's feature score is the mean over its tiles
of the Mahalanobis distance, divided by √D.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from volseg.errors import ModelError

FILE_NAME = "shift_features.pt"
TILES_PER_CASE = 4
MAX_CASES = 32


def bottleneck_input(net: torch.nn.Module) -> torch.nn.Module | None:
    """The module whose input is the network's deepest feature map (the first decoder
    up-sampling), or None for a network without a U-Net decoder."""
    from volseg.networks.unet import UNetDecoder

    for module in net.modules():
        if isinstance(module, UNetDecoder):
            return module.transpconvs[0]
    return None


def pool(features: torch.Tensor) -> torch.Tensor:
    """(B, C, z, y, x) → float32 (B, 2 C): per-channel spatial mean, then standard deviation."""
    f = features.float().flatten(2)
    return torch.cat((f.mean(dim=2), f.std(dim=2, unbiased=False)), dim=1)


class FeatureProbe:
    """Keeps the pooled bottleneck features of every forward pass of ``networks`` while
    :attr:`recording` (the sliding window turns it off for mirrored passes).

    Use as a context manager; the hooks are removed on exit. ``features[k]`` is then a float32
    (T, 2 C) array of network ``k``'s tiles (None when the network has no decoder).
    """

    def __init__(self, networks: Sequence[torch.nn.Module]) -> None:
        self.recording = True
        self._chunks: list[list[torch.Tensor]] = [[] for _ in networks]
        self._handles = []
        self.supported = []
        self._sinks = []
        for k, net in enumerate(networks):
            if hasattr(net, "set_feature_sink"):  # another runtime's export hands the pooled features over
                self.supported.append(net.set_feature_sink(self._sink(k)))
                self._sinks.append(net)
                continue
            module = bottleneck_input(net)
            self.supported.append(module is not None)
            if module is not None:
                self._handles.append(module.register_forward_pre_hook(self._hook(k)))

    def _sink(self, k: int):
        def sink(pooled: torch.Tensor) -> None:
            if self.recording:
                self._chunks[k].append(pooled.float().cpu())
        return sink

    def _hook(self, k: int):
        sink = self._sink(k)

        def hook(_module, args):
            if self.recording:
                sink(pool(args[0]))
        return hook

    @property
    def features(self) -> list[np.ndarray | None]:
        return [torch.cat(c).numpy() if ok and c else None for c, ok in zip(self._chunks, self.supported)]

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        for net in self._sinks:
            net.set_feature_sink(None)
        self._handles, self._sinks = [], []

    def __enter__(self) -> "FeatureProbe":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class FeatureReference:
    """Training tiles' pooled features: ``mean`` and ``std`` (D,), and the ``precision`` (D, D)
    of the standardized features (inverse of the shrunk correlation); ``tiles``, ``shrinkage``."""

    mean: np.ndarray
    std: np.ndarray
    precision: np.ndarray
    tiles: int
    shrinkage: float

    @classmethod
    def fit(cls, features: np.ndarray) -> "FeatureReference":
        """Fit on float (T, D) features of T ≥ 2 training tiles."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] < 2:
            raise ValueError(f"a feature reference needs at least 2 tiles, got shape {x.shape}")
        mean = x.mean(axis=0)
        std = np.maximum(x.std(axis=0), 1e-6 * max(float(np.abs(x).max()), 1.0))
        z = (x - mean) / std
        cov, shrinkage = ledoit_wolf(z)
        return cls(mean, std, np.linalg.inv(cov), int(x.shape[0]), shrinkage)

    def distances(self, features: np.ndarray) -> np.ndarray:
        """float64 (T,) Mahalanobis distance / √D of (T, D) tile features."""
        z = (np.asarray(features, dtype=np.float64) - self.mean) / self.std
        d2 = np.einsum("td,de,te->t", z, self.precision, z)
        return np.sqrt(np.maximum(d2, 0.0) / z.shape[1])

    def score(self, features: np.ndarray) -> float:
        """A case's feature score: the mean of :meth:`distances` over its tiles."""
        return float(self.distances(features).mean())

    def save(self, path: str | os.PathLike) -> Path:
        from volseg.io.atomic import write_atomic

        tensors = {"mean": torch.from_numpy(self.mean), "std": torch.from_numpy(self.std),
                   "precision": torch.from_numpy(self.precision), "tiles": torch.tensor(self.tiles),
                   "shrinkage": torch.tensor(self.shrinkage)}
        return write_atomic(path, lambda tmp: torch.save(tensors, tmp))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FeatureReference":
        """Read a reference written by :meth:`save` (tensors only: ``weights_only=True``).

        Raises:
            ModelError: The file is unreadable or not a feature reference.
        """
        try:
            t = torch.load(path, map_location="cpu", weights_only=True)
            ref = cls(t["mean"].numpy(), t["std"].numpy(), t["precision"].numpy(), int(t["tiles"]),
                      float(t["shrinkage"]))
        except Exception as e:  # noqa: BLE001 - any failure means the file is not what it claims
            raise ModelError(path, f"not a readable feature reference ({type(e).__name__}: {e}); "
                             "train the fold again or delete the file") from None
        if ref.precision.shape != (ref.mean.size, ref.mean.size):
            raise ModelError(path, f"precision {ref.precision.shape} does not match {ref.mean.size} features")
        return ref


def ledoit_wolf(z: np.ndarray) -> tuple[np.ndarray, float]:
    """Shrunk covariance of centred (n, D) samples and its shrinkage weight.

    The estimate is (1 − w) S + w μ I with S the sample covariance, μ its mean eigenvalue and
    w = min(1, b² / d²), where d² = ‖S − μ I‖²_F and b² = (1/n²) Σ_k ‖z_k z_kᵀ − S‖²_F
    (Ledoit & Wolf, 2004).
    """
    n, dim = z.shape
    s = z.T @ z / n
    mu = float(np.trace(s)) / dim
    d2 = float(np.sum((s - mu * np.eye(dim)) ** 2))
    sq = np.sum(z * z, axis=1)
    b2 = float(np.sum(sq ** 2 - 2.0 * np.einsum("kd,de,ke->k", z, s, z)) + n * np.sum(s * s)) / n ** 2
    w = 1.0 if d2 <= 0 else min(1.0, max(b2, 0.0) / d2)
    return (1.0 - w) * s + w * mu * np.eye(dim), w


def tile_features(network: torch.nn.Module, image: torch.Tensor, patch_size: Sequence[int], step_fraction: float,
                  tiles: int | None, rng: np.random.Generator, tile_batch: int = 2,
                  device: torch.device | str = "cpu") -> np.ndarray | None:
    """Pooled bottleneck features (T, 2 C) of ``tiles`` random sliding-window tiles of one
    preprocessed float32 (C, Z, Y, X) image (every tile when None), unmirrored; None when the
    network has no decoder."""
    from volseg.inference.sliding_window import pad_to_patch
    from volseg.kernels.gaussian import tile_starts

    padded, _ = pad_to_patch(image.float(), patch_size)
    starts = [tile_starts(s, p, step_fraction) for s, p in zip(padded.shape[1:], patch_size)]
    positions = [(z, y, x) for z in starts[0] for y in starts[1] for x in starts[2]]
    if tiles is not None and len(positions) > tiles:
        positions = [positions[i] for i in sorted(rng.choice(len(positions), tiles, replace=False))]
    pz, py, px = patch_size
    with FeatureProbe([network]) as probe, torch.inference_mode():
        if not probe.supported[0]:
            return None
        for i in range(0, len(positions), tile_batch):
            batch = torch.stack([padded[:, z:z + pz, y:y + py, x:x + px] for z, y, x in positions[i:i + tile_batch]])
            network(batch.to(device))
        return probe.features[0]


def fit_feature_reference(network: torch.nn.Module, images: Sequence, patch_size: Sequence[int],
                          step_fraction: float, tiles_per_case: int = TILES_PER_CASE, max_cases: int = MAX_CASES,
                          seed: int = 0, device: torch.device | str = "cpu") -> FeatureReference | None:
    """:class:`FeatureReference` of random tiles of training images.

    Args:
        network: The fold's network, in eval mode, on ``device``.
        images: Preprocessed float32 (C, Z, Y, X) arrays or tensors (e.g. memory maps of
            ``CASE.npy``); at most ``max_cases`` of them, chosen at random, are used.
        patch_size, step_fraction: The configuration's tile size (z, y, x) and step.
        tiles_per_case: Random sliding-window tiles per case.
        seed: Seed of the choice of cases and tiles.

    Returns:
        The reference, or None when the network has no decoder or fewer than 2 tiles ran.
    """
    return fit_feature_references([network], images, patch_size, step_fraction, tiles_per_case, max_cases, seed,
                                  device)[0]


def fit_feature_references(networks: Sequence[torch.nn.Module], images: Sequence, patch_size: Sequence[int],
                           step_fraction: float, tiles_per_case: int = TILES_PER_CASE, max_cases: int = MAX_CASES,
                           seed: int = 0, device: torch.device | str = "cpu") -> list[FeatureReference | None]:
    """:func:`fit_feature_reference` of each of ``networks`` (e.g. one per fold), reading each
    chosen image once: every network gets the cases and tiles it would get alone."""
    rngs = [np.random.default_rng(seed) for _ in networks]
    order = list(range(len(images)))
    if len(order) > max_cases:  # every generator draws (the same cases), so that each goes on as it would alone
        order = [sorted(r.choice(len(order), max_cases, replace=False).tolist()) for r in rngs][0]
    feats: list[list[np.ndarray] | None] = [[] for _ in networks]
    for i in order:
        if all(f is None for f in feats):  # no network has a decoder to take features from
            break
        image = torch.from_numpy(np.array(images[i], dtype=np.float32))
        for k, network in enumerate(networks):
            if feats[k] is not None:
                f = tile_features(network, image, patch_size, step_fraction, tiles_per_case, rngs[k], device=device)
                if f is None:
                    feats[k] = None
                else:
                    feats[k].append(f)
    refs = []
    for fk in feats:
        x = np.concatenate(fk) if fk else np.zeros((0, 0))
        refs.append(FeatureReference.fit(x) if fk is not None and x.shape[0] >= 2 else None)
    return refs


def fit_fold_features(model_dir: str | os.PathLike, plan_dir: str | os.PathLike, fold: str,
                      device: torch.device | str = "cpu", seed: int = 0) -> Path | None:
    """Fit and write ``fold_K/shift_features.pt`` from the fold's final network and its
    preprocessed training cases; returns the file, or None when nothing could be fitted."""
    from volseg.model import fold_dir, load_model
    from volseg.shift.check import training_cases

    model = load_model(model_dir, [fold], "final", device)
    folder = Path(plan_dir) / "preprocessed" / model.config_name
    ids = [c for c in training_cases(model_dir, [fold]) or [] if (folder / f"{c}.npy").is_file()]
    images = [np.load(folder / f"{c}.npy", mmap_mode="r") for c in ids]
    inf = model.config["inference"]
    ref = fit_feature_reference(model.networks[0], images, model.config["patch_size"], inf["step_fraction"],
                                seed=seed, device=device)
    if ref is None:
        return None
    return ref.save(fold_dir(model_dir, fold) / FILE_NAME)
