"""The main job on built-in demo data: demo data → plan → train → predict → evaluate.

``--dataset ms`` (the default): two-timepoint FLAIR, labels stable / new / vanishing, scored
per label and for the regions "lesions at follow-up" and "all lesions". ``--dataset lung``:
chest CT with nodules, trained as a segmentation task (the nodule class), scored voxel-wise
and nodule by nodule.

Run through ``bash scripts/demo.sh [OUT]``, which installs volseg first. Every stage is
one call of volseg's Python API; the table at the end gives the scores and the time of
each stage. Outputs under OUT: ``data/`` (the dataset), ``plan/`` (fingerprint, plan,
preprocessed cases, and ``plan/models/<configuration>/``, the model folder with its
curves and the held-out fold's predictions), ``predictions/`` (test cases) and
``evaluation/`` (summary.json, CSV, plots).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path


def stage(name: str, timings: dict):
    class _Stage:
        def __enter__(self):
            print(f"\n== {name} ==", flush=True)
            self.t0 = time.perf_counter()

        def __exit__(self, *exc):
            timings[name] = time.perf_counter() - self.t0
            if exc[0] is None:
                print(f"   {name}: {timings[name]:.1f} s", flush=True)

    return _Stage()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="demo_run", help="output folder (default demo_run)")
    ap.add_argument("--dataset", choices=["ms", "lung"], default="ms", help="which demo dataset (default ms)")
    ap.add_argument("--cases", type=int, default=12, help="training cases of the demo dataset")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=18,
                    help="training epochs (default 18, a fixed budget of 360 iterations, so the scores do not "
                         "depend on the machine's speed; the plan says 30)")
    ap.add_argument("--iters", type=int, default=20, help="iterations per epoch (default 20)")
    ap.add_argument("--train-minutes", type=float, default=0.0,
                    help="optional time limit of training: fewer epochs on a slower machine, so the scores then "
                         "depend on its speed (default 0: no limit)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import volseg

    out = Path(args.out)
    data, plan_dir = out / "data" / f"{args.dataset}_demo", out / "plan"
    timings: dict[str, float] = {}
    with stage("demo data", timings):
        volseg.demo_data(args.dataset, data, num_cases=args.cases, seed=args.seed)
    with stage("plan", timings):
        plans = volseg.plan(data, plan_dir, device="cpu")
        from volseg.planning.summary import plan_table

        print(plan_table(plans))
    with stage("train", timings):  # ends with the sliding-window validation of the held-out fold
        fold_dir = volseg.train(plan_dir, fold=0, epochs=args.epochs, iterations=args.iters,
                                time_limit_minutes=args.train_minutes or None)
    model_dir = fold_dir.parent
    with stage("predict", timings):
        volseg.predict([data / "imagesTs"], out / "predictions", model_dir, save_uncertainty=True)
    with stage("evaluate", timings):
        validation = fold_dir / "validation"
        regions = {"followup_lesions": (1, 2), "all_lesions": (1, 2, 3)} if args.dataset == "ms" else None
        summary = volseg.evaluate(validation, validation / "reference", out / "evaluation", dataset_dir=data,
                                  images_dir=data / "imagesTr", regions=regions, lesion_wise=True)
    print_table(summary, timings, out, model_dir)
    return 0


def print_table(summary: dict, timings: dict, out: Path, model_dir: Path) -> None:
    """Dice per class, lesion-wise F1, and time per stage."""
    print("\n== results on the held-out fold ==")
    print(f"{'label':<22}{'Dice':>8}{'lesion F1':>11}")
    for name, rec in summary["labels"].items():
        dice = rec["stats"]["dice"]["mean"]
        f1 = rec.get("lesions", {}).get("pooled", {}).get("f1", float("nan"))
        f1 = float("nan") if f1 is None else f1
        print(f"{name:<22}{dice:>8.3f}{f1:>11.3f}")
    print(f"\n{'stage':<22}{'seconds':>8}")
    for name, sec in timings.items():
        print(f"{name:<22}{sec:>8.1f}")
    print(f"{'total':<22}{sum(timings.values()):>8.1f}")
    print(f"\nmodel folder: {model_dir}  (curves: fold_0/progress.png)")
    print(f"evaluation:   {out / 'evaluation'}  (summary.json, cases.csv, plots/)")


if __name__ == "__main__":
    sys.exit(main())
