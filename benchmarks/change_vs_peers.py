"""New and vanishing MS lesions: volseg's longitudinal model against a 4-class model and nnU-Net v2.

One ms demo dataset (``--cases`` training cases, ``--test`` labelled test cases), fold 0,
the main job's CPU budget (``--epochs`` × ``--iters``, default 18 × 20 = 360 iterations),
every model scored on the same unseen test cases by volseg's evaluator with the MSSEG-2
lesion matching (anima's rule):

- ``longitudinal``: volseg's change model as planned (``fusion`` "difference"), and at
  ``--budgets`` multiples of the budget (the learning curve);
- ``siamese``, ``concat``: the same model with the other input fusions;
- ``no-change-aug`` (only when listed): the longitudinal model without timepoint swap,
  lesion paste and misregistration, to see what they add;
- ``4-class``: the same dataset planned as plain segmentation (softmax over background,
  stable, new, vanishing on the stacked channels), as volseg trained it before the task existed;
- ``nnU-Net``: nnU-Net v2's ``3d_fullres`` on the stacked channels, its plan edited to the
  4-class model's spacing, patch, batch and topology, same split and iterations, test-time
  mirroring on (as volseg's), no post-processing.

Rows: lesion-wise F1, sensitivity and PPV of new and of vanishing lesions (pooled over the
test cases), their mean number of false-positive lesions on the test cases without such a
lesion (nFP), all-lesion Dice, F1 and sensitivity, and the training and prediction times.
nnU-Net v2 lives in its own environment (``bash scripts/setup_peers.sh``); without it the
script says so and runs volseg's models only.

Usage:
    python benchmarks/change_vs_peers.py [--work DIR] [--variants longitudinal,siamese,concat,4-class,nnU-Net]
        [--budgets 1,2,4] [--epochs 18] [--iters 20] [--cases 12] [--test 8] [--nnunet-python PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import DEFAULT_PEER, cpu_name, print_versions  # noqa: E402

CONFIG = "3d_cpu"
REGIONS = {"followup_lesions": (1, 2), "all_lesions": (1, 2, 3)}
VARIANTS = ("longitudinal", "siamese", "concat", "4-class", "nnU-Net", "no-change-aug")
VERSIONS_KEY = "versions"  # change_results.json: the torch builds, beside the model rows


def segmentation_copy(dataset: Path, dest: Path) -> Path:
    """The dataset with ``task: "segmentation"`` (links to the same files): the 4-class model."""
    dest.mkdir(parents=True, exist_ok=True)
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        if not (dest / sub).exists():
            (dest / sub).symlink_to(dataset / sub)
    meta = json.loads((dataset / "dataset.json").read_text())
    meta["task"] = "segmentation"
    (dest / "dataset.json").write_text(json.dumps(meta, indent=2))
    return dest


def evaluate(pred: Path, dataset: Path, out: Path) -> dict:
    import volseg

    return volseg.evaluate(pred, dataset / "labelsTs", out, dataset_dir=dataset, regions=REGIONS, lesion_wise=True,
                           plots=False)


def volseg_model(name: str, dataset: Path, work: Path, epochs: int, iters: int, fusion: str | None,
                 change_aug: bool = True) -> dict:
    """Plan, train fold 0, predict the test cases, evaluate; returns scores and times."""
    import volseg
    from volseg.planning.plans import save_plans

    root = work / name
    shutil.rmtree(root, ignore_errors=True)
    t0 = time.perf_counter()
    plans = volseg.plan(dataset, root / "plan", device="cpu", progress=False)
    if fusion is not None:
        plans["configurations"][CONFIG]["longitudinal"]["fusion"] = fusion
        if not change_aug:
            for aug in plans["configurations"][CONFIG]["longitudinal"]["augmentation"].values():
                aug["p"] = 0.0
        save_plans(plans, root / "plan" / "plans.json")
    t1 = time.perf_counter()
    fold = volseg.train(root / "plan", fold=0, epochs=epochs, iterations=iters, progress=False)
    t2 = time.perf_counter()
    volseg.predict([dataset / "imagesTs"], root / "pred", fold.parent, progress=False)
    t3 = time.perf_counter()
    summary = evaluate(root / "pred", dataset, root / "evaluation")
    return {"summary": summary, "iterations": epochs * iters, "plan_s": t1 - t0, "train_s": t2 - t1,
            "predict_s": t3 - t2, "config": plans["configurations"][CONFIG], "model": str(fold.parent)}


def nnunet_model(python: Path, dataset: Path, work: Path, cfg: dict, splits: Path, epochs: int, iters: int) -> dict:
    from e2e_vs_nnunet import nnunet_pipeline

    root = work / "nnunet"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    args = argparse.Namespace(epochs=epochs, iters=iters, fold=0, tta=True)
    times, pred = nnunet_pipeline(python, dataset, root, cfg, splits, dataset / "imagesTs", dataset / "labelsTs", args)
    summary = evaluate(pred, dataset, root / "evaluation")
    return {"summary": summary, "iterations": epochs * iters, "train_s": times["train"], "predict_s": times["predict"]}


def row(result: dict) -> dict:
    labels = result["summary"]["labels"]

    def get(label: str, *keys):
        node = labels.get(label, {})
        for k in keys:
            node = (node or {}).get(k)
        return node

    out = {}
    for kind in ("new", "vanishing"):
        out[f"{kind} F1"] = get(kind, "lesions", "pooled", "f1")
        out[f"{kind} sens"] = get(kind, "lesions", "pooled", "sensitivity")
        out[f"{kind} PPV"] = get(kind, "lesions", "pooled", "precision")
        out[f"{kind} nFP"] = get(kind, "lesions", "lesion_free", "nFP_mean")
    out["all Dice"] = get("all_lesions", "stats", "dice", "mean")
    out["all F1"] = get("all_lesions", "lesions", "pooled", "f1")
    out["all sens"] = get("all_lesions", "lesions", "pooled", "sensitivity")
    out["iterations"] = result["iterations"]
    out["train s"] = result["train_s"]
    out["predict s"] = result["predict_s"]
    return out


def table(rows: dict[str, dict]) -> str:
    cols = list(next(iter(rows.values())))
    lines = ["| model | " + " | ".join(cols) + " |", "| --- |" + " --- |" * len(cols)]
    for name, r in rows.items():
        cells = []
        for c in cols:
            v = r[c]
            cells.append("–" if v is None or v != v else (f"{v:.0f}" if c.endswith(" s") or c == "iterations"
                                                           else f"{v:.2f}"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, help="working folder (default: a temporary one)")
    ap.add_argument("--variants", default=",".join(VARIANTS[:5]), help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--budgets", default="1,2,4", help="multiples of the budget for the longitudinal model")
    ap.add_argument("--epochs", type=int, default=18)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--cases", type=int, default=12)
    ap.add_argument("--test", type=int, default=8)
    ap.add_argument("--nnunet-python", type=Path, default=DEFAULT_PEER)
    args = ap.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    import torch

    from volseg.demo import generate_ms_dataset

    work = args.work or Path(tempfile.mkdtemp(prefix="volseg_change_bench_"))
    dataset = work / "Dataset501_VolsegDemo"
    if not (dataset / "dataset.json").is_file():
        generate_ms_dataset(dataset, num_cases=args.cases, num_test=args.test, seed=0)
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores; torch {torch.__version__}; ms demo {args.cases} training "
          f"+ {args.test} test cases, fold 0; budget {args.epochs} × {args.iters} iterations", flush=True)
    versions = print_versions(args.nnunet_python if "nnU-Net" in variants else None)
    results_path = work / "change_results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    results[VERSIONS_KEY] = versions  # the torch builds of this run (not a model row); written with the first row

    def record(name: str, result: dict) -> None:
        results[name] = {"row": row(result), "summary": result["summary"]}
        results_path.write_text(json.dumps(results, indent=1, default=str))
        print(f"{name}: {json.dumps(results[name]['row'])}", flush=True)

    budgets = [int(b) for b in args.budgets.split(",") if b] if "longitudinal" in variants else []
    for b in budgets:
        name = "longitudinal" if b == 1 else f"longitudinal {b}×"
        record(name, volseg_model(name.replace(" ", "_"), dataset, work, args.epochs * b, args.iters, None))
    for fusion in ("siamese", "concat"):
        if fusion in variants:
            record(fusion, volseg_model(fusion, dataset, work, args.epochs, args.iters, fusion))
    if "no-change-aug" in variants:
        record("no change augmentation", volseg_model("no_change_aug", dataset, work, args.epochs, args.iters,
                                                      "difference", change_aug=False))
    four = None
    if "4-class" in variants or "nnU-Net" in variants:
        seg = segmentation_copy(dataset, work / "Dataset502_VolsegDemoSeg")
        four = volseg_model("four_class", seg, work, args.epochs, args.iters, None)
        record("4-class", four)
    if "nnU-Net" in variants:
        if args.nnunet_python.is_file():
            splits = Path(four["model"]) / "splits.json"
            record("nnU-Net", nnunet_model(args.nnunet_python, dataset, work, four["config"], splits,
                                           args.epochs, args.iters))
        else:
            print(f"nnU-Net v2 not found at {args.nnunet_python}: not run (bash scripts/setup_peers.sh installs it, "
                  "or pass --nnunet-python)")
    print("\n" + table({k: v["row"] for k, v in results.items() if k != VERSIONS_KEY}))
    print(f"\nresults: {results_path}")


if __name__ == "__main__":
    main()
