"""Does the conformal guarantee hold? Random calibration/test splits of unseen MS demo cases.

One MS demo model (the main job's: 12 training cases, fold 0, 18 × 20 iterations) predicts
``--test`` unseen labelled cases as its held-out validation does (probabilities kept, no
post-processing, the plan's mirroring). These predictions are exchangeable, so they stand in
for out-of-fold predictions. Each case's loss on the threshold grid is computed once per risk
(:mod:`volseg.conformal.risks`); then ``--splits`` times the cases are shuffled, the first
``--n-cal`` calibrate and the rest test:

- ``lesion_fnr``, ``voxel_fnr`` with conformal risk control at ``--alpha``: the mean test risk
  over the splits must be <= alpha and should sit near the lower bound alpha − 2/(n+1);
- ``lesion_fdr`` with Learn-then-Test (Hoeffding–Bentkus, fixed sequence) at ``--alpha-fdr``,
  ``--delta``: the share of splits whose test risk exceeds alpha must be <= delta.

Reported per risk: the distribution of the test risk, the threshold, and the price (false
positive lesions per test case, and the risk) against the plain 0.5 threshold. Plots: the risk
against the threshold, the histogram of test risks, a reliability diagram of lesion scores.

Uncertainty against errors (``uncertainty.json``, ``uncertainty_errors.png``): per voxel of the
head, the AUROC of predictive entropy, expected entropy and mutual information for telling
the misclassified voxels (the plain label map against the reference) from the others; per
predicted lesion, the AUROC of its mean uncertainty for telling false-positive lesions from
true ones.

Nodule boxes (``--dataset lung``): a trained lung demo detector (``--model``, e.g. the main
job's ``demo_run/plan_lung/models/3d_cpu``; trained with the main job's settings when not
given) predicts ``--test`` unseen scans of the lung demo (all candidates, no sweep), and
``box_fnr`` (missed nodules per scan) is calibrated by CRC over the same random splits; the
price is false-positive boxes per scan, against the detection sweep's threshold.

Usage:
    python benchmarks/conformal_coverage.py [--dataset ms|lung] [--work DIR] [--test 60] [--splits 1000]
        [--n-cal 20] [--alpha 0.1] [--alpha-fdr 0.3] [--delta 0.1] [--model MODEL]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import cpu_name, print_versions  # noqa: E402

CONFIG = "3d_cpu"


def train_model(work: Path, args) -> tuple[Path, Path]:
    """(dataset, model folder): the main job's MS model, trained once and reused."""
    import volseg
    from volseg.demo import generate_ms_dataset

    data = work / "data"
    if not (data / "dataset.json").is_file():
        generate_ms_dataset(data, num_cases=args.cases, num_test=args.test, seed=args.seed)
    if args.model:
        return data, Path(args.model)
    model = work / "plan" / "models" / CONFIG
    if not (model / "fold_0" / "checkpoint_final.pt").is_file():
        volseg.plan(data, work / "plan", device="cpu")
        volseg.train(work / "plan", fold=0, epochs=args.epochs, iterations=args.iters, progress=False)
    return data, model


def predict_cases(data: Path, model: Path, out: Path, boxes: bool = False) -> float:
    """Predict the test cases like a held-out fold (probabilities, uncertainty, no post-processing)."""
    import volseg

    t0 = time.perf_counter()
    if not (out / "summary.json").is_file():
        volseg.predict([data / "imagesTs"], out, model, save_probabilities=not boxes, save_uncertainty=not boxes,
                       postprocess=False, progress=False)
    return time.perf_counter() - t0


def case_losses(model: Path, pred: Path, data: Path, risk: str):
    from volseg.conformal.cases import dense_case_losses
    from volseg.conformal.risks import get_risk, ordered_grid
    from volseg.planning.plans import load_plans
    from volseg.tasks import make_task

    task = make_task(load_plans(model / "plans.json"))
    r = get_risk(risk)
    grid = ordered_grid(r)
    cases, _ = dense_case_losses([(pred, data / "labelsTs")], task, ".nii.gz", r, grid, None)
    return cases, grid


def splits(cases, grid: np.ndarray, n_cal: int, alpha: float, n_splits: int, seed: int, delta: float | None):
    """Per split: (threshold, test risk, test FP per case) at λ̂, and at the plain 0.5."""
    from volseg.conformal import crc_calibrate, ltt_calibrate

    keep = [c for c in cases if "all" in c.losses]
    losses = np.stack([c.losses["all"] for c in keep])
    fp = np.stack([c.fp["all"] for c in keep])
    naive = int(np.argmin(np.abs(grid - 0.5)))
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n_splits):
        order = rng.permutation(len(keep))
        cal, test = order[:n_cal], order[n_cal:]
        if delta is None:
            j = crc_calibrate(losses[cal], alpha).index
        else:
            j = ltt_calibrate(losses[cal], alpha, delta).index
        rows.append((grid[j], losses[test, j].mean(), fp[test, j].mean(), losses[test, naive].mean(),
                     fp[test, naive].mean()))
    return np.asarray(rows), losses, fp, len(keep)


def summarize(rows: np.ndarray, alpha: float, n_cal: int, delta: float | None) -> dict:
    t, risk, fp, risk05, fp05 = rows.T
    out = {"splits": int(len(rows)), "n_cal": n_cal, "alpha": alpha, "delta": delta,
           "mean_test_risk": float(risk.mean()), "test_risk_quantiles": {q: float(np.quantile(risk, float(q)))
                                                                          for q in ("0.05", "0.5", "0.95")},
           "threshold_median": float(np.median(t)), "fp_per_case": float(fp.mean()),
           "naive": {"threshold": 0.5, "mean_test_risk": float(risk05.mean()), "fp_per_case": float(fp05.mean())}}
    if delta is None:
        out["crc_lower_bound"] = alpha - 2.0 / (n_cal + 1)
    else:
        out["share_above_alpha"] = float((risk > alpha).mean())
    return out


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for ``positive`` (ties count half), by ranks."""
    from scipy.stats import rankdata

    pos = positive.astype(bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


MAPS = {"predictive entropy": "entropy", "expected entropy": "expected_entropy",
        "mutual information": "mutual_information"}


def uncertainty_vs_errors(pred: Path, labels_dir: Path, images_dir: Path, seed: int,
                          max_voxels: int = 3_000_000) -> dict:
    """Voxel- and lesion-level AUROC of the uncertainty maps for the errors of the plain labels."""
    import cc3d

    from volseg.io.nifti import read_image

    rng = np.random.default_rng(seed)
    voxel = {name: [] for name in MAPS}
    errors, lesion_rows = [], []
    ids = sorted(p.name[:-len(".nii.gz")] for p in pred.glob("*.nii.gz"))
    per_case = max(1, max_voxels // max(1, len(ids)))
    for case in ids:
        labels, _ = read_image(pred / f"{case}.nii.gz")
        ref, _ = read_image(labels_dir / f"{case}.nii.gz")
        image, _ = read_image(images_dir / f"{case}_0000.nii.gz")
        maps = {name: read_image(pred / "maps" / f"{case}_{m}.nii.gz")[0] for name, m in MAPS.items()
                if (pred / "maps" / f"{case}_{m}.nii.gz").is_file()}
        head = np.flatnonzero(image.ravel() > 0)
        pick = rng.choice(head, size=min(per_case, head.size), replace=False)
        wrong = (labels.ravel() > 0) != (ref.ravel() > 0)
        errors.append(wrong[pick])
        for name, m in maps.items():
            voxel[name].append(m.ravel()[pick])
        probs = np.load(pred / "maps" / f"{case}_probabilities.npz")["probabilities"].astype(np.float32).max(0)
        comps, n = cc3d.connected_components(labels > 0, connectivity=6, return_N=True)
        for i in range(1, n + 1):
            inside = comps == i
            lesion_rows.append({"fp": not bool((ref[inside] > 0).any()), "score": float(probs[inside].mean()),
                                **{name: float(m[inside].mean()) for name, m in maps.items()}})
    err = np.concatenate(errors)
    out = {"cases": len(ids), "voxels": int(err.size), "error_rate": float(err.mean()),
           "voxel_auroc": {name: auroc(np.concatenate(v), err) for name, v in voxel.items() if v},
           "lesions": len(lesion_rows), "false_positive_lesions": sum(r["fp"] for r in lesion_rows)}
    fp = np.array([r["fp"] for r in lesion_rows])
    out["lesion_auroc"] = {name: auroc(np.array([r[name] for r in lesion_rows]), fp) for name in voxel
                           if lesion_rows and name in lesion_rows[0]}
    out["_curves"] = {name: (np.concatenate(v), err) for name, v in voxel.items() if v}
    out["_reliability"] = reliability(lesion_rows) if lesion_rows else {}
    return out


def plot(results: dict, grids: dict, losses: dict, unc: dict, out: Path,
         filename: str = "conformal_coverage.png") -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    if not results:
        return paths + _uncertainty_figure(unc, out, plt)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for name, res in results.items():
        g, m = grids[name], losses[name]
        order = np.argsort(g)
        axes[0].plot(g[order], m.mean(0)[order], label=name)
        axes[1].hist(res["_rows"][:, 1], bins=30, alpha=0.5, label=name)
    for name, res in results.items():
        axes[1].axvline(res["alpha"], color="k", lw=0.8)
    axes[0].set(xlabel="threshold", ylabel="mean loss over cases", title="risk against the threshold")
    for res in results.values():
        axes[0].axhline(res["alpha"], color="k", lw=0.8, ls=":")
    axes[1].set(xlabel="test risk per split", ylabel="splits", title="test risk at the calibrated threshold")
    rel = unc.get("_reliability")
    if rel:
        axes[2].plot([0, 1], [0, 1], "k:", lw=0.8)
        axes[2].plot(rel["confidence"], rel["precision"], "o-")
        axes[2].set(xlabel="mean lesion score", ylabel="share of true lesions", title="reliability of lesion scores")
    for ax in axes[:2]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out / filename)
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths + _uncertainty_figure(unc, out, plt)


def _uncertainty_figure(unc: dict, out: Path, plt) -> list[Path]:
    paths = []
    if unc.get("_curves"):
        fig, ax = plt.subplots(figsize=(5, 4.5))
        for name, (s, e) in unc["_curves"].items():
            fpr, tpr = roc_points(s, e)
            ax.plot(fpr, tpr, label=f"{name} (AUROC {unc['voxel_auroc'][name]:.2f})")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set(xlabel="false-positive rate", ylabel="true-positive rate",
               title="misclassified voxels against uncertainty")
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(out / "uncertainty_errors.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def roc_points(scores: np.ndarray, positive: np.ndarray, points: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rate, true-positive rate) at ``points`` score quantiles."""
    pos = positive.astype(bool)
    ts = np.unique(np.quantile(scores, np.linspace(0, 1, points)))[::-1]
    tpr = [float((scores[pos] >= t).mean()) for t in ts]
    fpr = [float((scores[~pos] >= t).mean()) for t in ts]
    return np.asarray([0.0, *fpr, 1.0]), np.asarray([0.0, *tpr, 1.0])


def reliability(lesion_rows: list[dict], bins: int = 8) -> dict:
    """Per bin of a predicted lesion's mean score (largest map): the share of true lesions."""
    score = np.array([r["score"] for r in lesion_rows])
    true = np.array([not r["fp"] for r in lesion_rows], float)
    edges = np.linspace(0.5, 1.0, bins + 1)
    idx = np.clip(np.searchsorted(edges, score, side="right") - 1, 0, bins - 1)
    used = [b for b in range(bins) if (idx == b).any()]
    return {"confidence": [float(score[idx == b].mean()) for b in used],
            "precision": [float(true[idx == b].mean()) for b in used],
            "lesions": [int((idx == b).sum()) for b in used]}


def run_lung(args, work: Path) -> dict:
    """Box FNR per scan on unseen lung demo scans, over random calibration/test splits."""
    import volseg
    from volseg.conformal.cases import box_case_losses
    from volseg.conformal.risks import get_risk, ordered_grid
    from volseg.demo import generate_lung_dataset
    from volseg.planning.plans import save_plans

    data = work / "data"
    if not (data / "dataset.json").is_file():
        generate_lung_dataset(data, num_cases=args.cases, num_test=args.test, seed=args.seed)
    t0 = time.perf_counter()
    model = Path(args.model) if args.model else work / "plan" / "models" / CONFIG
    if not (model / "fold_0" / "checkpoint_final.pt").is_file():
        plans = volseg.plan(data, work / "plan", device="cpu")
        plans["configurations"][CONFIG]["inference"]["mirror_axes"] = [2]  # as the main job
        save_plans(plans, work / "plan" / "plans.json")
        volseg.train(work / "plan", fold=0, epochs=args.epochs, iterations=args.iters, progress=False)
    t_train = time.perf_counter() - t0
    pred = work / "predictions"
    t_pred = predict_cases(data, model, pred, boxes=True)
    grid = ordered_grid(get_risk("box_fnr"))
    cases, _ = box_case_losses([(pred, data / "annotationsTs.csv")], grid, None)
    rows, m, fp, n = splits(cases, grid, args.n_cal, args.alpha, args.splits, args.seed, None)
    sweep = json.loads((model / "detection_sweep.json").read_text())["score_threshold"]
    j = int(np.argmin(np.abs(grid - sweep)))
    res = {"method": "crc", "cases_with_lesions": n, **summarize(rows, args.alpha, args.n_cal, None),
           "sweep_threshold": sweep, "sweep_risk_all_cases": float(m[:, j].mean()),
           "sweep_fp_per_case": float(np.mean([c.fp["all"][j] for c in cases])), "scans": len(cases)}
    res["_rows"] = rows
    return {"risks": {"box_fnr": res}, "grids": {"box_fnr": grid}, "losses": {"box_fnr": m},
            "train_seconds": round(t_train, 1), "predict_seconds": round(t_pred, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=["ms", "lung"], default="ms")
    ap.add_argument("--work", default="bench_conformal")
    ap.add_argument("--model", help="a trained MS demo model folder to reuse (default: train one)")
    ap.add_argument("--cases", type=int, help="training cases (default: the main job's, 12 MS / 20 lung)")
    ap.add_argument("--test", type=int, default=60)
    ap.add_argument("--epochs", type=int, help="training epochs (default: the main job's, 18 MS / 20 lung)")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--splits", type=int, default=1000)
    ap.add_argument("--n-cal", type=int, default=20)
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--alpha-fdr", type=float, default=0.3)
    ap.add_argument("--delta", type=float, default=0.1)
    ap.add_argument("--uncertainty", nargs=3, metavar=("PRED", "LABELS", "IMAGES"),
                    help="only the uncertainty-against-errors analysis of one prediction folder (with "
                         "--save-uncertainty maps), e.g. a model's fold_0/validation, its reference/ and imagesTr")
    args = ap.parse_args()
    versions = print_versions(None)  # no peer runs here
    if args.uncertainty:
        pred, labels, images = (Path(p) for p in args.uncertainty)
        unc = uncertainty_vs_errors(pred, labels, images, args.seed)
        Path(args.work).mkdir(parents=True, exist_ok=True)
        figures = plot({}, {}, {}, unc, Path(args.work))
        report = {"cpu": cpu_name(), "versions": versions, "predictions": str(pred), "risks": {},
                  "uncertainty": {k: v for k, v in unc.items() if not k.startswith("_")},
                  "figures": [str(p) for p in figures]}
        (Path(args.work) / "uncertainty.json").write_text(json.dumps(report, indent=2))
        print(markdown(report))
        return 0
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    lung = args.dataset == "lung"
    args.cases = args.cases or (20 if lung else 12)
    args.epochs = args.epochs or (20 if lung else 18)
    if lung:
        out = run_lung(args, work)
        figures = plot(out["risks"], out["grids"], out["losses"], {}, work, "conformal_coverage_lung.png")
        report = {"cpu": cpu_name(), "versions": versions, "dataset": "lung", "test_cases": args.test,
                  "train_seconds": out["train_seconds"], "predict_seconds": out["predict_seconds"],
                  "risks": {k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")}
                            for k, v in out["risks"].items()}, "figures": [str(p) for p in figures]}
        (work / "conformal_coverage_lung.json").write_text(json.dumps(report, indent=2))
        print(markdown(report))
        return 0
    t0 = time.perf_counter()
    data, model = train_model(work, args)
    t_train = time.perf_counter() - t0
    pred = work / "predictions"
    t_pred = predict_cases(data, model, pred)
    results, grids, losses = {}, {}, {}
    for risk, alpha, delta in (("lesion_fnr", args.alpha, None), ("voxel_fnr", args.alpha, None),
                               ("lesion_fdr", args.alpha_fdr, args.delta)):
        cases, grid = case_losses(model, pred, data, risk)
        rows, m, fp, n = splits(cases, grid, args.n_cal, alpha, args.splits, args.seed, delta)
        results[risk] = {"method": "ltt" if delta else "crc", "cases_with_lesions": n,
                         **summarize(rows, alpha, args.n_cal, delta), "_rows": rows}
        grids[risk], losses[risk] = grid, m
    unc = uncertainty_vs_errors(pred, data / "labelsTs", data / "imagesTs", args.seed)
    figures = plot({k: v for k, v in results.items() if k != "lesion_fdr"}, grids, losses, unc, work)
    report = {"cpu": cpu_name(), "versions": versions, "dataset": "ms", "test_cases": args.test,
              "train_seconds": round(t_train, 1), "predict_seconds": round(t_pred, 1),
              "risks": {k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")} for k, v in results.items()},
              "uncertainty": {k: v for k, v in unc.items() if not k.startswith("_")},
              "reliability": unc["_reliability"], "figures": [str(p) for p in figures]}
    (work / "conformal_coverage.json").write_text(json.dumps(report, indent=2))
    print(markdown(report))
    return 0


def markdown(report: dict) -> str:
    if not report["risks"]:
        lines = [f"CPU: {report['cpu']}; {report['predictions']}"]
    else:
        lines = [f"CPU: {report['cpu']}; {report['test_cases']} unseen {report['dataset']} demo cases; "
                 f"{next(iter(report['risks'].values()))['splits']} random calibration/test splits"]
    if report["risks"]:
        lines += ["", "| risk | method | α (δ) | n cal | mean test risk | 5–95% | CRC bound α−2/(n+1) | share > α | "
                  "threshold | FP/case | at 0.5: risk, FP/case |", "|---" * 11 + "|"]
    for name, r in report["risks"].items():
        q = r["test_risk_quantiles"]
        level = f"{r['alpha']} ({r['delta']})" if r["delta"] else f"{r['alpha']}"
        lines.append(f"| {name} | {r['method']} | {level} | "
                     f"{r['n_cal']} | {r['mean_test_risk']:.3f} | {q['0.05']:.3f}–{q['0.95']:.3f} | "
                     f"{r.get('crc_lower_bound', float('nan')):.3f} | {r.get('share_above_alpha', float('nan')):.3f} | "
                     f"{r['threshold_median']:.2f} | {r['fp_per_case']:.2f} | "
                     f"{r['naive']['mean_test_risk']:.3f}, {r['naive']['fp_per_case']:.2f} |")
    u = report.get("uncertainty")
    if u is None:
        return "\n".join(lines)
    lines += ["", f"Uncertainty against errors ({u['cases']} cases, {u['voxels']} head voxels, error rate "
              f"{u['error_rate']:.4f}; {u['lesions']} predicted lesions, {u['false_positive_lesions']} false):", "",
              "| map | voxel AUROC | lesion AUROC (false vs true lesions) |", "|---|---|---|"]
    for name, v in u["voxel_auroc"].items():
        lines.append(f"| {name} | {v:.3f} | {u['lesion_auroc'].get(name, float('nan')):.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
