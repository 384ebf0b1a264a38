"""Does the shift check catch inputs the model was not trained for, without false alarms?

One MS demo model (the main job's: 12 training cases, fold 0, 18 × 20 iterations; or
``--model``) is copied to ``WORK/model`` (the given folder is never changed) and given what the
shift check needs: a fingerprint with whole-image intensities (recomputed from the training
dataset when it predates them), ``fold_0/shift_features.pt`` (fitted on the fold's preprocessed
training cases when missing), and no ``shift.json``, so that ``predict`` only reports the three
scores (fingerprint, features, uncertainty; larger = less like the training data).

``--test`` unseen in-distribution cases of ``DATA/imagesTs`` are predicted, and the last
``--shifted`` of them once more under each shift of :data:`volseg.demo.shifts.SHIFTS`. Test-time
mirroring is off to keep the CPU time down; calibration and test cases are scored identically,
so the conformal guarantee is unaffected. Per shift:

- Dice (mean over the classes stable/new/vanishing present in the reference or prediction) of
  the unshifted and the shifted versions of the same cases, against the original reference
  (nearest-neighbour resampled to the 5 mm grid for ``spacing``; none for ``ct``);
- the AUROC of each raw score, shifted cases against all unshifted ones;
- the combined check: ``--splits`` times the unshifted cases are split at random into
  ``--n-cal`` calibration cases and the rest; every held-out and shifted case gets
  :func:`~volseg.shift.pvalues.combined_pvalue` against the calibration scores. Reported: the
  false-alarm rate (share of held-out unshifted cases with p <= ``--alpha``; must be <= alpha),
  the detection rate per shift, and the AUROC of -p (shifted against held-out), mean over splits;
- the aim: combined AUROC >= 0.9 on every shift that lowers Dice by more than 0.1 (``ct``,
  which has no reference, counts as such a shift).

Usage:
    python benchmarks/shift_detection.py [--work DIR] [--model MODEL --data DATASET] [--test 60]
        [--shifted 10] [--splits 10000] [--n-cal 40] [--alpha 0.05]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import cpu_name, print_versions  # noqa: E402

CONFIG = "3d_cpu"
SCORES = ("fingerprint", "features", "uncertainty")
CLASSES = (1, 2, 3)
ENDING = ".nii.gz"


def train_model(work: Path, args: argparse.Namespace) -> tuple[Path, Path]:
    """(dataset, model folder): ``--model``/``--data``, or the main job's MS model trained once in ``work``."""
    if args.model:
        if not args.data:
            raise SystemExit("--model needs --data (the dataset it was trained on, with imagesTs/labelsTs)")
        return Path(args.data), Path(args.model)
    import volseg
    from volseg.demo import generate_ms_dataset

    data = work / "data"
    if not (data / "dataset.json").is_file():
        generate_ms_dataset(data, num_cases=12, num_test=args.test, seed=0)
    model = work / "plan" / "models" / CONFIG
    if not (model / "fold_0" / "checkpoint_final.pt").is_file():
        volseg.plan(data, work / "plan", device="cpu")
        volseg.train(work / "plan", fold=0, epochs=args.epochs, iterations=args.iters, progress=False)
    return data, model


def prepare_model(source: Path, data: Path, dest: Path) -> dict:
    """Copy ``source`` to ``dest`` (no validation folders, only the final checkpoint) and give the
    copy an up-to-date fingerprint and fold 0's feature reference; returns what was done."""
    from volseg.fingerprint.dataset import compute_fingerprint, write_fingerprint
    from volseg.io.dataset import load_dataset
    from volseg.shift.features import FILE_NAME, fit_fold_features

    done = {"source": str(source)}
    if not dest.is_dir():
        skip = shutil.ignore_patterns("validation", "checkpoint_best.pt", "checkpoint_latest.pt")
        shutil.copytree(source, dest.with_name(dest.name + ".tmp"), ignore=skip, dirs_exist_ok=True)
        dest.with_name(dest.name + ".tmp").rename(dest)
    (dest / "shift.json").unlink(missing_ok=True)
    fp = json.loads((dest / "fingerprint.json").read_text())
    if not all("image_intensity" in r for r in fp.get("cases", [])):
        write_fingerprint(compute_fingerprint(load_dataset(data), num_workers=1, progress=False),
                          dest / "fingerprint.json")
        done["fingerprint"] = "recomputed (no whole-image intensities)"
    if not (dest / "fold_0" / FILE_NAME).is_file():
        fit_fold_features(dest, source.parent.parent, "0", device="cpu")  # preprocessed cases: the plan folder
        done["shift_features"] = "fitted"
    return done


def channel_files(folder: Path, ids: list[str]) -> list[Path]:
    return sorted(p for c in ids for p in folder.glob(f"{c}_[0-9][0-9][0-9][0-9]{ENDING}"))


def predict_cases(files: list[Path], out: Path, model: Path) -> float:
    """Predict ``files`` into ``out`` without TTA (skipped when ``summary.json`` exists); seconds."""
    import volseg

    t0 = time.perf_counter()
    if not (out / "summary.json").is_file():
        volseg.predict(files, out, model, tta=False, progress=False)
    return time.perf_counter() - t0


def read_scores(out: Path) -> dict[str, dict[str, float]]:
    """Case id → shift scores of the done cases of a prediction folder."""
    cases = json.loads((out / "summary.json").read_text())["cases"]
    return {c: {k: float(v) for k, v in r["shift"]["scores"].items()}
            for c, r in cases.items() if r.get("status") == "done" and "shift" in r}


def match_grid(ref: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``ref`` resampled to ``shape`` by nearest neighbour, corners aligned as :func:`scipy.ndimage.zoom`."""
    idx = [np.rint(np.arange(n) * (m - 1) / max(n - 1, 1)).astype(int) for m, n in zip(ref.shape, shape)]
    return ref[np.ix_(*idx)]


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Mean Dice over the classes present in either map (1.0 when none is)."""
    values = []
    for c in CLASSES:
        p, r = pred == c, ref == c
        total = int(p.sum() + r.sum())
        if total:
            values.append(2.0 * int((p & r).sum()) / total)
    return float(np.mean(values)) if values else 1.0


def case_dice(pred: Path, labels: Path, ids: list[str]) -> dict[str, float]:
    from volseg.io.nifti import read_image

    out = {}
    for c in ids:
        if (pred / f"{c}{ENDING}").is_file():
            p, _ = read_image(pred / f"{c}{ENDING}")
            r, _ = read_image(labels / f"{c}{ENDING}")
            out[c] = dice(p, r if r.shape == p.shape else match_grid(r, p.shape))
    return out


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for ``positive``, by ranks (ties count half); NaN scores dropped."""
    from scipy.stats import rankdata

    keep = np.isfinite(scores)
    s, pos = scores[keep], positive[keep].astype(bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def score_matrix(scores: dict[str, dict[str, float]], ids: list[str]) -> np.ndarray:
    """(N, len(SCORES)) float, NaN where a case lacks a score."""
    return np.array([[scores[c].get(k, np.nan) for k in SCORES] for c in ids], dtype=np.float64).reshape(-1, 3)


def split_check(neg: np.ndarray, shifted: dict[str, np.ndarray], n_cal: int, alpha: float, n_splits: int,
                seed: int) -> dict:
    """False alarms, detection rates and AUROC of -p of the combined check over random splits."""
    from volseg.shift.pvalues import combined_pvalue, conformal_pvalue

    names = [k for j, k in enumerate(SCORES) if np.isfinite(neg[:, j]).all()]
    cols = [SCORES.index(k) for k in names]

    def as_dict(row: np.ndarray) -> dict[str, float]:
        return {k: float(row[j]) for k, j in zip(names, cols) if np.isfinite(row[j])}

    rng = np.random.default_rng(seed)
    false, per_score = [], {k: [] for k in names}
    det, roc = {s: [] for s in shifted}, {s: [] for s in shifted}
    for _ in range(n_splits):
        order = rng.permutation(len(neg))
        cal, test = neg[order[:n_cal]], neg[order[n_cal:]]
        calib = {k: cal[:, j].tolist() for k, j in zip(names, cols)}
        p_neg = np.array([combined_pvalue(calib, as_dict(r)) for r in test])
        false.append(float((p_neg <= alpha).mean()))
        for k, j in zip(names, cols):
            per_score[k].append(float(np.mean([conformal_pvalue(calib[k], r[j]) <= alpha for r in test])))
        for s, x in shifted.items():
            p = np.array([np.nan if (v := combined_pvalue(calib, as_dict(r))) is None else v for r in x])
            det[s].append(float((p <= alpha).mean()) if len(p) else float("nan"))
            roc[s].append(auroc(-np.concatenate([p_neg, p]), np.r_[np.zeros(len(p_neg)), np.ones(len(p))]))
    return {"scores_used": names, "splits": n_splits, "n_cal": n_cal, "n_test": len(neg) - n_cal, "alpha": alpha,
            "smallest_p_value": 1.0 / (n_cal + 1), "false_alarm_rate": float(np.mean(false)),
            "false_alarm_rate_se": float(np.std(false) / np.sqrt(len(false))),
            "false_alarm_rate_exact": float(np.floor(alpha * (n_cal + 1) + 1e-9) / (n_cal + 1)),
            "false_alarm_rate_per_score": {k: float(np.mean(v)) for k, v in per_score.items()},
            "detection_rate": {s: float(np.mean(v)) for s, v in det.items()},
            "auroc_combined": {s: float(np.nanmean(v)) for s, v in roc.items()}}


def aim(drop: float | None, combined: float) -> str:
    if drop is not None and drop <= 0.1:
        return "n/a (Dice drop <= 0.1)"
    return "met" if combined >= 0.9 else "missed"


def main() -> int:
    import torch

    from volseg.demo.shifts import SHIFTS, write_shifted

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="bench_shift")
    ap.add_argument("--model", help="a trained MS demo model folder to reuse (copied; default: train one)")
    ap.add_argument("--data", help="the dataset of --model (imagesTr/labelsTr, imagesTs/labelsTs)")
    ap.add_argument("--test", type=int, default=60, help="unseen in-distribution cases")
    ap.add_argument("--shifted", type=int, default=10, help="last test cases that are shifted")
    ap.add_argument("--epochs", type=int, default=18)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--splits", type=int, default=10000)
    ap.add_argument("--n-cal", type=int, default=40)
    ap.add_argument("--alpha", type=float, default=0.05)
    args = ap.parse_args()
    versions = print_versions(None)  # no peer runs here
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data, source = train_model(work, args)
    t_train = time.perf_counter() - t0
    model = work / "model"
    prepared = prepare_model(source, data, model)
    t_prepare = time.perf_counter() - t0 - t_train
    images, labels = data / "imagesTs", data / "labelsTs"
    ids = sorted(p.name[:-len(f"_0000{ENDING}")] for p in images.glob(f"*_0000{ENDING}"))[:args.test]
    if args.n_cal >= len(ids):
        raise SystemExit(f"--n-cal {args.n_cal} leaves no held-out case among {len(ids)} test cases")
    seconds = {"train": round(t_train, 1), "prepare_model": round(t_prepare, 1)}
    seconds["predict_unshifted"] = round(predict_cases(channel_files(images, ids), work / "predictions", model), 1)
    base = read_scores(work / "predictions")
    base_ids = [c for c in ids if c in base]
    base_dice = case_dice(work / "predictions", labels, ids)
    shift_ids = ids[-args.shifted:]
    shifted_scores, shifts = {}, {}
    for s in SHIFTS:
        folder = work / "shifted" / s
        t1 = time.perf_counter()
        if not (folder / "pred" / "summary.json").is_file():
            write_shifted(images, folder / "images", shift_ids, s, seed=args.seed)
        predict_cases(channel_files(folder / "images", shift_ids), folder / "pred", model)
        seconds[f"shift_{s}"] = round(time.perf_counter() - t1, 1)
        sc = read_scores(folder / "pred")
        done = [c for c in shift_ids if c in sc]
        shifted_scores[s] = score_matrix(sc, done)
        d_shift = None if s == "ct" else case_dice(folder / "pred", labels, done)
        same = [c for c in done if c in base_dice and (d_shift is None or c in d_shift)]
        d0 = float(np.mean([base_dice[c] for c in same])) if same else float("nan")
        d1 = None if d_shift is None else float(np.mean([d_shift[c] for c in same])) if same else float("nan")
        neg, pos = score_matrix(base, base_ids), shifted_scores[s]
        y = np.r_[np.zeros(len(neg)), np.ones(len(pos))]
        shifts[s] = {"cases": done, "failed": [c for c in shift_ids if c not in sc], "dice_unshifted": d0,
                     "dice_shifted": d1, "dice_drop": None if d1 is None else d0 - d1,
                     "auroc": {k: auroc(np.r_[neg[:, j], pos[:, j]], y) for j, k in enumerate(SCORES)},
                     "case_scores": sc, "case_dice": d_shift}
    check = split_check(score_matrix(base, base_ids), shifted_scores, args.n_cal, args.alpha, args.splits, args.seed)
    for s, r in shifts.items():
        r["auroc"]["combined"] = check["auroc_combined"][s]
        r["detection_rate"] = check["detection_rate"][s]
        r["aim"] = aim(r["dice_drop"], r["auroc"]["combined"])
    seconds["total"] = round(time.perf_counter() - t0, 1)
    report = {"cpu": cpu_name(), "torch": torch.__version__, "versions": versions, "model": prepared,
              "data": str(data), "tta": False, "test_cases": len(base_ids), "shifted_cases": len(shift_ids),
              "dice_unshifted_all": float(np.mean([base_dice[c] for c in base_ids])) if base_ids else float("nan"),
              "check": check, "shifts": shifts, "unshifted": {"case_scores": base, "case_dice": base_dice},
              "seconds": seconds}
    (work / "shift_detection.json").write_text(json.dumps(report, indent=2))
    print(markdown(report))
    return 0


def markdown(report: dict) -> str:
    c = report["check"]
    lines = [f"CPU: {report['cpu']}; torch {report['torch']}; {report['test_cases']} unseen MS demo cases, the last "
             f"{report['shifted_cases']} shifted; no TTA; {c['splits']} random splits", "",
             "| shift | Dice unshifted → shifted (drop) | AUROC fingerprint | features | uncertainty | combined | "
             f"detected at α {c['alpha']:g} | aim |", "|---" * 8 + "|"]
    for s, r in report["shifts"].items():
        if r["dice_shifted"] is None:
            d = f"{r['dice_unshifted']:.3f} → n/a (no reference)"
        else:
            d = f"{r['dice_unshifted']:.3f} → {r['dice_shifted']:.3f} ({r['dice_drop']:.3f})"
        a = r["auroc"]
        lines.append(f"| {s} | {d} | {a['fingerprint']:.3f} | {a['features']:.3f} | {a['uncertainty']:.3f} | "
                     f"{a['combined']:.3f} | {r['detection_rate']:.2f} | {r['aim']} |")
    per = ", ".join(f"{k} {v:.3f}" for k, v in c["false_alarm_rate_per_score"].items())
    lines += ["", f"False-alarm rate on held-out unshifted cases: {c['false_alarm_rate']:.3f} ± "
              f"{c['false_alarm_rate_se']:.3f} (Monte-Carlo error) at α {c['alpha']:g}; with continuous scores its "
              f"expectation is exactly {c['false_alarm_rate_exact']:.4f} = ⌊α(n+1)⌋/(n+1) "
              f"(combined; {per} per score), {c['n_cal']} calibration and {c['n_test']} held-out cases per split "
              f"(smallest p-value {c['smallest_p_value']:.3g}). Drop = unshifted − shifted Dice."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
