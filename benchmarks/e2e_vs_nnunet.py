"""End to end: volseg against nnU-Net v2 on the same demo dataset, fold and training budget.

Both pipelines run on the CPU, one after the other, on the same machine:

    plan + preprocess → train fold F (E epochs × I iterations) → predict the held-out cases
    → evaluate

volseg uses its CPU plan (``3d_cpu``). nnU-Net v2's ``3d_fullres`` plan is edited to the same
spacing, patch, batch and network topology (its own plan would take about a minute per
iteration on 2 cores), its preprocessing re-run for that plan, and its folds set to
volseg's (``--fold``, default 0). Both train for the same number of iterations with the same number of
augmentation workers and validation iterations per epoch, and predict with overlap 0.5,
without test-time mirroring unless ``--tta`` (both) and without post-processing.

Both sets of predictions are scored by volseg's evaluator against the same references
(Dice per class, lesion-wise F1), so the numbers are comparable; each tool's own
evaluation is timed as its "evaluate" stage (nnU-Net's computes Dice and IoU only).
nnU-Net's "plan" stage is its ``nnUNetv2_plan_and_preprocess``; the re-preprocessing for the
edited plan exists only to equalize the settings and is not counted.

nnU-Net v2 lives in its own environment (``bash scripts/setup_peers.sh``); without it
only volseg is run, and the script says so.

Usage:
    python benchmarks/e2e_vs_nnunet.py [--epochs 30] [--iters 20] [--cases 12] [--fold 0] [--tta]
        [--nnunet-python ../peers/nnunet/bin/python] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import DEFAULT_PEER, cpu_flags, cpu_name, print_versions  # noqa: E402
from plan_vs_nnunet import make_dataset, nnunet_plan, run  # noqa: E402
from train_throughput import align_nnunet_plan  # noqa: E402

CONFIG = "3d_cpu"
REGIONS = ["followup_lesions=1,2", "all_lesions=1,2,3"]
STAGES = ("plan", "train", "predict", "evaluate")


def held_out_cases(dataset: Path, case_ids: list[str], dest: Path) -> tuple[Path, Path]:
    """Copies of the held-out cases' channel files and labels: (images folder, labels folder)."""
    images, labels = dest / "images", dest / "labels"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for case in case_ids:
        for f in sorted((dataset / "imagesTr").glob(f"{case}_[0-9][0-9][0-9][0-9].nii.gz")):
            shutil.copy2(f, images / f.name)
        shutil.copy2(dataset / "labelsTr" / f"{case}.nii.gz", labels / f"{case}.nii.gz")
    return images, labels


def score(pred: Path, ref: Path, dataset: Path, out: Path) -> tuple[float, dict]:
    """volseg's evaluation of ``pred`` against ``ref``: (seconds, summary.json as a dict)."""
    seconds = run([sys.executable, "-m", "volseg", "evaluate", "--pred", str(pred), "--ref", str(ref), "--dataset",
                   str(dataset), "-o", str(out), "--regions", *REGIONS, "--no-plots"])
    return seconds, json.loads((out / "summary.json").read_text())


def volseg_pipeline(dataset: Path, root: Path,
                    args: argparse.Namespace) -> tuple[dict, dict, dict, list[str], Path]:
    """Runs volseg; returns (seconds per stage, evaluation summary, plan configuration, held-out ids, labels folder)."""
    vs = lambda *a: [sys.executable, "-m", "volseg", *a]  # noqa: E731
    plan_dir, times = root / "volseg" / "plan", {}
    times["plan"] = run(vs("plan", str(dataset), "-o", str(plan_dir), "-c", CONFIG, "--device", "cpu"))
    cfg = json.loads((plan_dir / "plans.json").read_text())["configurations"][CONFIG]
    model = plan_dir / "models" / CONFIG
    times["train"] = run(vs("train", str(plan_dir), "-c", CONFIG, "--fold", str(args.fold), "--epochs", str(args.epochs),
                            "--iters", str(args.iters), "--device", "cpu", "--no-validation", "--no-progress"))
    val_ids = json.loads((model / "splits.json").read_text())[args.fold]["val"]
    images, labels = held_out_cases(dataset, val_ids, root / "held_out")
    pred = root / "volseg" / "predictions"
    times["predict"] = run(vs("predict", "-i", str(images), "-o", str(pred), "-m", str(model), "--device", "cpu",
                              "--no-postprocessing", "--no-progress", *([] if args.tta else ["--no-tta"])))
    times["evaluate"], summary = score(pred, labels, dataset, root / "volseg" / "evaluation")
    return times, summary, cfg, val_ids, labels


def nnunet_pipeline(python: Path, dataset: Path, root: Path, cfg: dict, model_splits: Path, images: Path,
                    labels: Path, args: argparse.Namespace) -> tuple[dict, Path]:
    """Runs nnU-Net v2 at volseg's settings; returns (seconds per stage, predictions folder)."""
    bin_dir, times = python.parent, {}
    pre = root / "nnUNet_preprocessed"
    env = {**os.environ, "nnUNet_raw": str(root / "nnUNet_raw"), "nnUNet_preprocessed": str(pre),
           "nnUNet_results": str(root / "nnUNet_results"), "nnUNet_compile": "f",
           "nnUNet_n_proc_DA": str(cfg["training"].get("num_workers", 1))}
    times["plan"], _ = nnunet_plan(python, dataset, root, 2)
    align_nnunet_plan(pre, dataset.name, cfg)
    run([str(bin_dir / "nnUNetv2_preprocess"), "-d", "501", "-c", "3d_fullres", "-np", "2"], env)
    shutil.copy2(model_splits, pre / dataset.name / "splits_final.json")  # same format: [{"train", "val"}]
    log = root / "nnunet_train.json"
    times["train"] = run([str(python), str(HERE / "peers" / "nnunet_train.py"), "501", str(args.epochs),
                          str(args.iters), str(cfg["training"].get("val_iterations", 4)), str(log), str(args.fold)], env)
    pred = root / "nnunet" / "predictions"
    times["predict"] = run([str(bin_dir / "nnUNetv2_predict"), "-i", str(images), "-o", str(pred), "-d", "501",
                            "-c", "3d_fullres", "-f", str(args.fold), "-chk", "checkpoint_final.pth", "-device", "cpu",
                            "-step_size", "0.5", "-npp", "1", "-nps", "1",
                            *([] if args.tta else ["--disable_tta"])], env)
    times["evaluate"] = run([str(bin_dir / "nnUNetv2_evaluate_folder"), str(labels), str(pred), "-djfile",
                             str(pre / dataset.name / "dataset.json"), "-pfile",
                             str(pre / dataset.name / "nnUNetPlans.json"), "-np", "2"], env)
    return times, pred


def scores_table(summaries: dict[str, dict]) -> str:
    """Dice and lesion-wise F1 per label, one column pair per tool."""
    tools = list(summaries)
    head = f"{'label':<20}" + "".join(f"{t + ' Dice':>16}{t + ' F1':>14}" for t in tools)
    rows = [head]
    for name in summaries[tools[0]]["labels"]:
        row = f"{name:<20}"
        for t in tools:
            rec = summaries[t]["labels"].get(name, {})
            dice = rec.get("stats", {}).get("dice", {}).get("mean", float("nan"))
            f1 = rec.get("lesions", {}).get("pooled", {}).get("f1")
            row += f"{dice:>16.3f}{float('nan') if f1 is None else f1:>14.3f}"
        rows.append(row)
    return "\n".join(rows)


def times_table(times: dict[str, dict]) -> str:
    """Seconds per stage per tool, with nnU-Net / volseg ratios when both ran."""
    tools = list(times)
    rows = [f"{'stage':<12}" + "".join(f"{t:>14}" for t in tools) + ("   nnU-Net / volseg" if len(tools) > 1 else "")]
    for stage in (*STAGES, "total"):
        vals = [sum(times[t].values()) if stage == "total" else times[t][stage] for t in tools]
        row = f"{stage:<12}" + "".join(f"{v:>13.1f}s" for v in vals)
        if len(vals) > 1:
            row += f"   {vals[1] / vals[0]:>10.2f}×"
        rows.append(row)
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=12, help="training cases of the ms demo dataset")
    ap.add_argument("--epochs", type=int, default=30, help="training epochs for both (default: the plan's 30)")
    ap.add_argument("--iters", type=int, default=20, help="iterations per epoch for both (default 20)")
    ap.add_argument("--fold", type=int, default=0, choices=range(5), help="cross-validation fold (default 0)")
    ap.add_argument("--tta", action="store_true", help="mirroring test-time augmentation for both")
    ap.add_argument("--nnunet-python", type=Path, default=DEFAULT_PEER)
    ap.add_argument("--work", type=Path, help="working folder (default: a temporary one)")
    args = ap.parse_args()
    root = args.work or Path(tempfile.mkdtemp(prefix="volseg_e2e_bench_"))
    root.mkdir(parents=True, exist_ok=True)
    dataset = make_dataset("ms", args.cases, root)
    print(f"machine: {cpu_name()} ({cpu_flags()}), {os.cpu_count()} cores, CPU; ms demo, "
          f"{args.cases} cases, fold {args.fold}; budget {args.epochs} × {args.iters} iterations; "
          f"TTA {'on' if args.tta else 'off'}", flush=True)
    versions = print_versions(args.nnunet_python)
    times, summaries = {}, {}
    times["volseg"], summaries["volseg"], cfg, val_ids, labels = volseg_pipeline(dataset, root, args)
    print(f"volseg done: {times['volseg']}", flush=True)
    if args.nnunet_python.is_file():
        model_splits = root / "volseg" / "plan" / "models" / CONFIG / "splits.json"
        times["nnU-Net"], pred = nnunet_pipeline(args.nnunet_python, dataset, root, cfg, model_splits,
                                                 root / "held_out" / "images", labels, args)
        _, summaries["nnU-Net"] = score(pred, labels, dataset, root / "nnunet" / "evaluation")
    else:
        print(f"nnU-Net v2 not found at {args.nnunet_python}: only volseg is run "
              "(bash scripts/setup_peers.sh installs it, or pass --nnunet-python)")
    print(f"\nheld-out cases: {', '.join(val_ids)}; patch {cfg['patch_size']}, batch {cfg['batch_size']}, "
          f"features {cfg['network']['features_per_stage']}")
    print("\n" + scores_table(summaries))
    print("\n" + times_table(times))
    (root / "e2e_results.json").write_text(json.dumps({"times": times, "val_ids": val_ids, "versions": versions,
                                                       "summaries": summaries}, indent=2))
    print(f"\nresults: {root / 'e2e_results.json'}")


if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as e:
        raise SystemExit(f"command failed: {e}") from e
