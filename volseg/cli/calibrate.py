"""``volseg calibrate``: a threshold whose risk (e.g. missed lesions) is guaranteed on new cases."""

from __future__ import annotations

import argparse

RISK_CHOICES = ("lesion_fnr", "voxel_fnr", "box_fnr", "lesion_fdr")


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "calibrate", help="calibrate a threshold with a finite-sample guarantee (conformal risk control)",
        description="Choose the probability (or box score) threshold of a model so that a risk holds on new cases: "
        "with conformal risk control the expected risk is at most ALPHA; with --delta (Learn-then-Test) the risk is "
        "at most ALPHA with probability at least 1 - DELTA. Calibrates on the out-of-fold predictions that training "
        "kept (MODEL/fold_K/validation), or on --predictions and --references. Writes MODEL/calibration.json, which "
        "volseg predict --calibrated applies.")
    p.add_argument("model", help="model folder written by volseg train")
    p.add_argument("--risk", required=True, choices=RISK_CHOICES,
                   help="lesion_fnr: missed lesions per case; voxel_fnr: missed lesion voxels per case; box_fnr: "
                        "missed nodules per scan (detection); lesion_fdr: false lesions among the found (needs --delta)")
    p.add_argument("--alpha", type=float, required=True, help="risk level in (0, 1), e.g. 0.1")
    p.add_argument("--delta", type=float,
                   help="Learn-then-Test: allowed probability that the risk exceeds alpha (high-probability control)")
    p.add_argument("--by", choices=["size", "class"],
                   help="Mondrian calibration: one guarantee per lesion-size bin (reference lesions) or per class")
    p.add_argument("--size-edges", type=float, nargs="+",
                   help="size bin edges for --by size (mm³ for lesions, mm diameter for nodules; default: terciles)")
    p.add_argument("--method", choices=["crc", "ltt"], help="default: crc, or ltt when --delta is given")
    p.add_argument("--pvalue", choices=["hb", "wsr"], default="hb",
                   help="Learn-then-Test p-values: Hoeffding-Bentkus (default) or Waudby-Smith-Ramdas")
    p.add_argument("--fwer", choices=["fixed_sequence", "bonferroni"], default="fixed_sequence",
                   help="Learn-then-Test multiple testing (default fixed_sequence, from the safest threshold)")
    p.add_argument("--coverage", type=float, default=0.1,
                   help="a reference lesion is found when more than this fraction of it is in the set (default 0.1)")
    p.add_argument("--predictions", help="a prediction folder with maps/CASE_probabilities.npz (or candidates.csv)")
    p.add_argument("--references", help="its reference label maps (or annotations.csv for detection)")
    p.add_argument("-o", "--out", help="where to write the record (default MODEL/calibration.json)")
    return p


def run(args: argparse.Namespace) -> int:
    from volseg.conformal.calibrate import calibrate_model
    from volseg.errors import VolsegError

    if not 0.0 <= args.coverage < 1.0:
        raise VolsegError(None, f"--coverage must be in [0, 1), got {args.coverage}")
    cal = calibrate_model(args.model, args.risk, args.alpha, delta=args.delta, by=args.by, method=args.method,
                          predictions=args.predictions, references=args.references, out=args.out,
                          coverage=args.coverage, size_edges=args.size_edges, pvalue=args.pvalue, fwer=args.fwer)
    print(cal["guarantee"])
    cc, naive = cal["calibration_cases"], cal["naive"]
    if cal["n_cases"] > cal["n"]:
        print(f"  {cal['n_cases'] - cal['n']} of the {cal['n_cases']} cases have no reference finding: they count "
              "towards the price only")
    for g, rec in cal["groups"].items():
        print(f"  {g}: n = {rec['n']}, threshold {rec['threshold']:.2f}, calibration risk "
              f"{cc['empirical_risk'][g]:.3f} (at {naive['threshold']:.2f}: {naive['empirical_risk'][g]:.3f})")
    print(f"  price: {cc['fp_per_case']:.2f} false positives per case (at {naive['threshold']:.2f}: "
          f"{naive['fp_per_case']:.2f})")
    return 0
