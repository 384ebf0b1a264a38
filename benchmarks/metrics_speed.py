"""Speed of volseg's evaluation metrics against MONAI's on the same synthetic pair.

Builds a reference label map (an organ, label 1, and ~20 lesions, label 2) and a
prediction (the organ shifted with a bumpy boundary; some lesions missed, moved or made
up), then times on the same pair, side by side:

* volseg ``evaluate_case`` (Dice, IoU, surface Dice, HD95, ASSD, volumes; both labels),
* MONAI ``compute_dice`` + ``compute_hausdorff_distance(percentile=95)`` +
  ``compute_surface_dice`` (the same three scores; MONAI extracts surfaces and distances
  once per metric, volseg once for all),
* volseg lesion-wise detection (no MONAI counterpart; timed alone).

Usage::

    python benchmarks/metrics_speed.py                 # 300×512×512 (z, y, x)
    python benchmarks/metrics_speed.py --size 96,160,160  # quicker
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_of, cpu_name, print_versions  # noqa: E402


def _ellipsoid(out: np.ndarray, value: int, centre, radii_vox, rng=None, bumps: float = 0.0) -> None:
    """Write an ellipsoid (optionally with a bumpy surface) into ``out`` within its bounding box."""
    lo = [max(int(c - r - 2), 0) for c, r in zip(centre, radii_vox)]
    hi = [min(int(c + r + 3), s) for c, r, s in zip(centre, radii_vox, out.shape)]
    zz, yy, xx = np.meshgrid(*[np.arange(a, b, dtype=np.float32) for a, b in zip(lo, hi)], indexing="ij")
    d = ((zz - centre[0]) / radii_vox[0]) ** 2 + ((yy - centre[1]) / radii_vox[1]) ** 2 \
        + ((xx - centre[2]) / radii_vox[2]) ** 2
    if bumps:
        d = d * (1 + bumps * np.sin(zz / 3.0) * np.cos(yy / 5.0) * np.sin(xx / 4.0))
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    out[box][d <= 1] = value


def make_pair(shape, spacing, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, reference) uint8 label maps of ``shape`` (z, y, x)."""
    rng = np.random.default_rng(seed)
    ref = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    centre = [s * 0.5 for s in shape]
    radii = [0.3 * s for s in shape]
    _ellipsoid(ref, 1, centre, radii)
    _ellipsoid(pred, 1, [c + 2 for c in centre], [r * 0.97 for r in radii], bumps=0.08)
    for i in range(20):
        c = [rng.uniform(0.1, 0.9) * s for s in shape]
        r_mm = rng.uniform(2.0, 10.0)
        r = [r_mm / sp for sp in spacing]
        _ellipsoid(ref, 2, c, r)
        if i % 5 == 0:
            continue  # missed
        shift = rng.normal(0, 1.0, 3)
        _ellipsoid(pred, 2, c + shift, [x * rng.uniform(0.8, 1.2) for x in r])
    for _ in range(5):  # spurious
        c = [rng.uniform(0.1, 0.9) * s for s in shape]
        _ellipsoid(pred, 2, c, [3.0 / sp for sp in spacing])
    return pred, ref


def time_volseg(pred, ref, spacing, tol, repeat):
    from volseg.evaluation import LesionConfig, evaluate_case

    evaluate_case(pred[:8, :8, :8], ref[:8, :8, :8], spacing, {"organ": 1}, lesion_cfg=LesionConfig())  # imports
    scores, t_metrics = best_of(repeat, lambda: evaluate_case(pred, ref, spacing, {"organ": 1, "lesion": 2},
                                                              tolerance_mm=tol))
    res, t_lesions = best_of(repeat, lambda: evaluate_case(pred, ref, spacing, {"lesion": 2}, tolerance_mm=tol,
                                                           lesion_cfg=LesionConfig()))
    return scores, t_metrics, res["lesion"]["lesions"], t_lesions


def time_monai(pred, ref, spacing, tol, repeat):
    import torch
    from monai.metrics import (
        compute_dice,
        compute_hausdorff_distance,
        compute_surface_dice,
    )

    p = torch.from_numpy(pred).long()[None, None]
    r = torch.from_numpy(ref).long()[None, None]
    times, scores = {}, {}
    t = time.perf_counter()
    p1 = torch.nn.functional.one_hot(p[:, 0], 3).permute(0, 4, 1, 2, 3).to(torch.uint8)
    r1 = torch.nn.functional.one_hot(r[:, 0], 3).permute(0, 4, 1, 2, 3).to(torch.uint8)
    times["one-hot"] = time.perf_counter() - t
    del p, r
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, fn in (("dice", lambda: compute_dice(p1, r1, include_background=False)),
                         ("hd95_mm", lambda: compute_hausdorff_distance(p1, r1, percentile=95, spacing=spacing)),
                         ("surface_dice", lambda: compute_surface_dice(p1, r1, [tol, tol], spacing=spacing))):
            out, times[name] = best_of(repeat, fn)
            scores[name] = out[0].tolist()
    return scores, times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="300,512,512", help="volume shape z,y,x (default 300,512,512)")
    ap.add_argument("--spacing", default="1.5,0.78,0.78", help="voxel size z,y,x in mm")
    ap.add_argument("--tolerance-mm", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=1, help="report the fastest of N runs of each (default 1)")
    ap.add_argument("--no-monai", action="store_true", help="time volseg only")
    args = ap.parse_args()
    shape = tuple(int(v) for v in args.size.split(","))
    spacing = tuple(float(v) for v in args.spacing.split(","))
    import torch

    print(f"device: CPU {cpu_name()}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}, "
          f"numpy {np.__version__}")
    print_versions(None)  # MONAI runs in this environment: no peer torch
    t = time.perf_counter()
    pred, ref = make_pair(shape, spacing)
    print(f"pair {shape} (z, y, x) at {spacing} mm, built in {time.perf_counter() - t:.1f} s; "
          f"organ {int((ref == 1).sum())} voxels, lesions {int((ref == 2).sum())} voxels")
    scores, t_vs, lesions, t_les = time_volseg(pred, ref, spacing, args.tolerance_mm, args.repeat)
    print(f"\nvolseg evaluate_case (Dice, IoU, NSD, HD95, ASSD, volumes; 2 labels): {t_vs:7.2f} s")
    print(f"volseg lesion-wise detection (label 2, incl. its voxel metrics):     {t_les:7.2f} s  "
          f"-> {lesions['n_ref']} ref / {lesions['n_pred']} pred lesions, tp_ref {lesions['tp_ref']}, "
          f"fp {lesions['fp']}, F1 {lesions['f1']:.3f}")
    if args.no_monai:
        return
    m_scores, m_times = time_monai(pred, ref, spacing, args.tolerance_mm, args.repeat)
    t_m = sum(v for k, v in m_times.items() if k != "one-hot")
    print("MONAI   " + ", ".join(f"{k} {v:.2f} s" for k, v in m_times.items())
          + f"  -> metrics {t_m:.2f} s, with one-hot input {t_m + m_times['one-hot']:.2f} s")
    print(f"\nratio MONAI / volseg, same three scores on the same pair: {t_m / t_vs:.1f}x "
          f"(counting MONAI's one-hot input: {(t_m + m_times['one-hot']) / t_vs:.1f}x)")
    print(f"\n{'metric':<14}{'label':<8}{'volseg':>12}{'MONAI':>12}")
    for metric in ("dice", "hd95_mm", "surface_dice"):
        for i, label in enumerate(("organ", "lesion")):
            print(f"{metric:<14}{label:<8}{scores[label][metric]:>12.5f}{m_scores[metric][i]:>12.5f}")


if __name__ == "__main__":
    main()
