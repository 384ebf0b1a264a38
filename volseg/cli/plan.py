"""``volseg plan``: fingerprint, plan and preprocess a dataset."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "plan", help="fingerprint a dataset, write plans.json, preprocess the training cases",
        description="Measure a dataset (fingerprint.json), derive every training and inference decision "
        "(plans.json) and preprocess the training cases into OUT/preprocessed/<configuration>/. "
        "Re-running skips what is up to date; an existing plans.json (possibly hand-edited) is kept "
        "unless --overwrite-plans is given.")
    p.add_argument("dataset", nargs="?", help="dataset folder in nnU-Net v2 raw layout (with dataset.json)")
    p.add_argument("-o", "--out", required=True, help="output folder for fingerprint.json, plans.json, preprocessed/")
    p.add_argument("--memory-gb", type=float, default=8.0,
                   help="GPU memory budget of 3d_fullres/3d_lowres in GB (default 8, mixed precision)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="device training will run on; picks the default configuration (3d_fullres on cuda, "
                   "3d_cpu on cpu; default: what this machine has)")
    p.add_argument("--cpu-gflop", type=float, default=100.0,
                   help="convolution GFLOP per training iteration of 3d_cpu (default 100, about 1 s on 2 cores)")
    p.add_argument("-c", "--configurations", nargs="+", metavar="NAME",
                   help="configurations to preprocess (default: the plan's default configuration)")
    p.add_argument("--no-preprocess", action="store_true", help="only fingerprint and plan")
    p.add_argument("--overwrite-plans", action="store_true", help="re-fingerprint and re-plan even if plans.json exists")
    p.add_argument("-j", "--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--show", action="store_true",
                   help="print a summary table of the plan (without DATASET: of the plan in OUT)")
    return p


def run(args: argparse.Namespace) -> int:

    from volseg.planning.plans import load_plans
    from volseg.planning.summary import plan_table

    if args.dataset is None:
        if not args.show:
            raise SystemExit("volseg plan: error: DATASET is required unless --show is given")
        print(plan_table(load_plans(Path(args.out) / "plans.json")))
        return 0
    from volseg.planning.run import plan_and_preprocess

    plans = plan_and_preprocess(args.dataset, args.out, memory_gb=args.memory_gb, device=args.device,
                                cpu_gflop=args.cpu_gflop, configurations=args.configurations,
                                preprocess=not args.no_preprocess, num_workers=args.workers,
                                overwrite_plans=args.overwrite_plans)
    if args.show:
        print(plan_table(plans))
    print(f"plans written to {Path(args.out) / 'plans.json'}")
    _note_too_few_cases(Path(args.out) / "fingerprint.json")
    return 0


def _note_too_few_cases(fingerprint: Path) -> None:
    """A one-line note on stderr when the dataset is too small for cross-validation."""
    import json
    import sys

    try:
        n = json.loads(fingerprint.read_text(encoding="utf-8"))["dataset"]["num_cases"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    if isinstance(n, int) and n < 2:
        print(f"volseg plan: note: {n} training case; cross-validation needs at least 2, so train it with "
              f"`volseg train {fingerprint.parent} --fold all`", file=sys.stderr)
