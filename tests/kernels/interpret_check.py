"""Run by test_triton_interpreter.py in a fresh process with TRITON_INTERPRET=1: the Triton
kernels on the CPU against the torch references. Exits non-zero on a mismatch."""

import os
import sys

assert os.environ.get("TRITON_INTERPRET") == "1", "set TRITON_INTERPRET=1 before importing triton"

import torch  # noqa: E402

from volseg.inference.sliding_window import predict_sliding_window  # noqa: E402
from volseg.kernels.accumulate import accumulate_torch, accumulate_triton  # noqa: E402
from volseg.kernels.finalize import finalize_torch, finalize_triton  # noqa: E402
from volseg.kernels.gaussian import gaussian_1d, patch_weight  # noqa: E402


def check(name: str, ok: bool, detail: str = "") -> None:
    print(f"{'ok ' if ok else 'FAIL'} {name} {detail}")
    if not ok:
        sys.exit(1)


def main() -> None:
    torch.manual_seed(0)
    k, shape, patch = 3, (20, 24, 28), (8, 12, 16)
    w = [gaussian_1d(p, 0.125) for p in patch]
    tiles = torch.randn(3, k, *patch)
    offsets = [(0, 0, 0), (4, 6, 8), (12, 12, 12)]  # overlapping, and touching the far border
    a, b = torch.zeros(k, *shape), torch.zeros(k, *shape)
    accumulate_torch(a, tiles, offsets, patch_weight(*w))
    accumulate_triton(b, tiles, offsets, *w)
    check("accumulate", torch.allclose(a, b, atol=1e-6), f"max diff {(a - b).abs().max():.2e}")

    acc = torch.randn(k, *shape) * 3
    norms = [torch.rand(s) + 0.5 for s in shape]
    for mode in ("softmax", "sigmoid"):
        ref = finalize_torch(acc, *norms, mode=mode, return_probabilities=True, return_uncertainty=True)
        tri = finalize_triton(acc, *norms, mode=mode, return_probabilities=True, return_uncertainty=True)
        if mode == "softmax":
            check("finalize labels", torch.equal(ref.labels, tri.labels))
        for f in ("probabilities", "max_prob", "entropy"):
            d = (getattr(ref, f).float() - getattr(tri, f).float()).abs().max().item()
            check(f"finalize {mode} {f}", d <= 1e-3, f"max diff {d:.2e}")

    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv3d(4, k, 1)).eval()
    img = torch.randn(1, 19, 25, 30)
    kw = dict(return_probabilities=True, return_uncertainty=True, mirror_axes=(1,), tile_batch=2)
    t = predict_sliding_window(net, img, patch, k, backend="torch", **kw)
    g = predict_sliding_window(net, img, patch, k, backend="triton", **kw)
    check("sliding window labels", torch.equal(t.labels, g.labels))
    d = (t.probabilities.float() - g.probabilities.float()).abs().max().item()
    check("sliding window probabilities", d <= 1e-3, f"max diff {d:.2e}")
    s = predict_sliding_window(net, img, patch, k, backend="triton", slab=True, **kw)
    check("triton slab mode", torch.equal(s.labels, g.labels))


if __name__ == "__main__":
    main()
