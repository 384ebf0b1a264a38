"""``volseg demo-data``: write a small synthetic dataset."""

from __future__ import annotations

import argparse


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "demo-data", help="write a small synthetic dataset (lung nodules in CT, or MS lesions at two timepoints)",
        description="Write a synthetic dataset in the nnU-Net v2 raw layout, at sizes where CPU training works. "
        "lung: chest CT in HU with nodules (instance labels, annotations.csv in world mm). ms: baseline and "
        "follow-up FLAIR built on the MNI152 templates shipped with nilearn (a parametric phantom without it), "
        "labels 1 stable, 2 new, 3 vanishing.")
    p.add_argument("kind", choices=["lung", "ms"], help="which dataset")
    p.add_argument("--out", required=True, help="dataset folder to write")
    p.add_argument("--cases", type=int, default=12, help="labelled training cases (default 12)")
    p.add_argument("--test-cases", type=int, help="test cases in imagesTs, their references in labelsTs (default cases // 5, at least 1)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    p.add_argument("--phantom", action="store_true", help="ms: use the parametric brain even if nilearn is installed")
    return p


def run(args: argparse.Namespace) -> int:
    from volseg.demo import generate_lung_dataset, generate_ms_dataset

    if args.cases < 1:
        raise SystemExit("volseg demo-data: error: --cases must be at least 1")
    if args.kind == "lung":
        out = generate_lung_dataset(args.out, args.cases, args.seed, num_test=args.test_cases)
    else:
        out = generate_ms_dataset(args.out, args.cases, args.seed, use_template=False if args.phantom else None,
                                  num_test=args.test_cases)
    print(f"{args.kind} demo dataset written to {out}")
    return 0
