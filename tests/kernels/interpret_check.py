"""Run by test_triton_interpreter.py in a fresh process with TRITON_INTERPRET=1: the Triton
kernels on the CPU against the torch references. Exits non-zero on a mismatch."""

import os
import sys

assert os.environ.get("TRITON_INTERPRET") == "1", "set TRITON_INTERPRET=1 before importing triton"

import torch  # noqa: E402

from volseg.inference.sliding_window import predict_sliding_window  # noqa: E402
from volseg.kernels.accumulate import (accumulate_torch, accumulate_triton, add_member_torch,  # noqa: E402
                                       add_member_triton)
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

    # member terms: K classes + expected entropy + mutual information channels
    terms = torch.cat([acc, torch.rand(2, *shape) * 1.5])
    for mode in ("softmax", "sigmoid"):
        ref = finalize_torch(terms, *norms, mode=mode, return_probabilities=True, return_uncertainty=True,
                             member_terms=True)
        tri = finalize_triton(terms, *norms, mode=mode, return_probabilities=True, return_uncertainty=True,
                              member_terms=True)
        plain = finalize_triton(acc, *norms, mode=mode, return_probabilities=True, return_uncertainty=True)
        fields = ("probabilities", "max_prob", "entropy", "expected_entropy", "mutual_information")
        same = all(torch.equal(getattr(plain, f), getattr(tri, f)) for f in fields[:3])
        if mode == "softmax":
            same = same and torch.equal(plain.labels, tri.labels)
            check("finalize member terms labels", torch.equal(ref.labels, tri.labels))
        check(f"finalize {mode} member terms leave the class outputs unchanged", same)
        d = max((getattr(ref, f).float() - getattr(tri, f).float()).abs().max().item() for f in fields)
        check(f"finalize {mode} member terms", d <= 1e-3, f"max diff {d:.2e}")

    # one ensemble member added to the running sums (logits, Σ H(p_m), Σ p_m), fused vs torch
    logits = torch.randn(2, k, 5, 6, 7) * 3
    for mode in ("softmax", "sigmoid"):
        tot_a, sp_a = torch.rand(2, k + 2, 5, 6, 7), torch.rand(2, k, 5, 6, 7)  # earlier members' sums
        tot_b, sp_b = tot_a.clone(), sp_a.clone()
        add_member_torch(tot_a, sp_a, logits, mode)
        add_member_triton(tot_b, sp_b, logits, mode)
        d = max((tot_a - tot_b).abs().max().item(), (sp_a - sp_b).abs().max().item())
        check(f"add member {mode}", d <= 1e-5 and torch.equal(tot_a[:, k + 1], tot_b[:, k + 1]), f"max diff {d:.2e}")

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
    fields = ("entropy", "expected_entropy", "mutual_information")
    d = max((getattr(t, f).float() - getattr(g, f).float()).abs().max().item() for f in fields)
    check("sliding window member terms", d <= 2e-3 and bool((g.mutual_information >= 0).all()), f"max diff {d:.2e}")
    d = max((getattr(s, f).float() - getattr(g, f).float()).abs().max().item() for f in fields)
    check("triton slab mode member terms", d <= 2e-3, f"max diff {d:.2e}")


if __name__ == "__main__":
    main()
