"""The main job on built-in demo data: demo data → plan → train → predict → evaluate, for each use.

``ms``: two-timepoint FLAIR, labels stable / new / vanishing, a change model (the plan's task
"longitudinal") scored on the held-out fold and on 8 unseen test cases per label and for the
regions "lesions at follow-up" and "all lesions", lesion by lesion with the MSSEG-2 rule; its
input-shift check compared with the held-out fold and 20 unlabelled in-distribution cases, and
shown on one test case under each shift of :mod:`volseg.demo.shifts`.
``lung``: chest CT with nodules, a Retina U-Net detector (the plan's task "detection")
trained from the instance maps, its boxes on the unseen test cases scored by LUNA16 FROC
and CPM. ``--dataset all`` (the default) runs both, MS first.

Run through ``bash scripts/demo.sh [OUT]``, which installs volseg first. Every stage is one
call of volseg's Python API, with a fixed number of training iterations, so that the scores
do not depend on the machine's speed. The table at the end gives the scores and the time of
each stage. Outputs under OUT, per dataset: ``data/`` (the dataset), ``plan_<name>/``
(fingerprint, plan, preprocessed cases, and ``models/<configuration>/``, the model folder
with its curves and the held-out fold's predictions), ``predictions_<name>/`` (test cases)
and ``evaluation_<name>/`` (summary.json, CSV, plots).
"""

from __future__ import annotations

import argparse
import json
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


FAILURES: list[str] = []


def note_learned_nothing(fold_dir: Path) -> None:
    """Keep the line saying that a fold learned nothing; the job then exits non-zero."""
    from volseg.training.progress import learned_nothing

    nothing = learned_nothing(fold_dir)
    if nothing:
        print(f"error: {nothing}", flush=True)
        FAILURES.append(nothing)


def run_ms(args, out: Path, timings: dict) -> dict:
    """The MS change job; returns the evaluation summaries of the held-out fold and of the test cases."""
    import volseg
    from volseg.conformal.calibrate import assess_calibration
    from volseg.demo import generate_ms_dataset
    from volseg.planning.plans import save_plans
    from volseg.planning.summary import plan_table

    data, plan_dir = out / "data" / "ms_demo", out / "plan_ms"
    with stage("ms: demo data", timings):
        generate_ms_dataset(data, num_cases=args.cases, num_test=args.ms_test, seed=args.seed)
    with stage("ms: plan", timings):
        plans = volseg.plan(data, plan_dir, device="cpu")
        # an edit of the plan, as for the lung demo: mirror only along x at test time (2 passes
        # instead of 8), to fit the CPU budget of the main job
        plans["configurations"]["3d_cpu"]["inference"]["mirror_axes"] = [2]
        save_plans(plans, plan_dir / "plans.json")
        print(plan_table(plans))
    with stage("ms: train", timings):  # ends with the held-out fold predicted and the lesion matching fitted
        fold_dir = volseg.train(plan_dir, fold=0, epochs=args.epochs, iterations=args.iters,
                                time_limit_minutes=args.train_minutes or None)
        note_learned_nothing(fold_dir)
    with stage("ms: calibrate", timings):  # missed lesions per case, on the held-out fold's probabilities
        cal = calibrate(fold_dir.parent, "lesion_fnr", args.alpha)
    with stage("ms: shift check", timings):  # in-distribution cases to compare with; shifted inputs
        shift = shift_check(args, out, data, fold_dir.parent)
    with stage("ms: predict", timings):
        # the calibrated outputs from the same forward passes (probabilities kept to score them)
        both = {"calibrated_out": str(out / "predictions_ms_calibrated"), "save_probabilities": True} if cal else {}
        volseg.predict([data / "imagesTs"], out / "predictions_ms", fold_dir.parent, save_uncertainty=True, **both)
    with stage("ms: evaluate", timings):
        validation = fold_dir / "validation"
        regions = {"followup_lesions": (1, 2), "all_lesions": (1, 2, 3)}
        held_out = volseg.evaluate(validation, validation / "reference", out / "evaluation_ms" / "held_out",
                                   dataset_dir=data, images_dir=data / "imagesTr", regions=regions, lesion_wise=True)
        test = volseg.evaluate(out / "predictions_ms", data / "labelsTs", out / "evaluation_ms" / "test",
                               dataset_dir=data, images_dir=data / "imagesTs", regions=regions, lesion_wise=True)
        shift["test"] = json.loads((out / "predictions_ms" / "summary.json").read_text())
        if cal is None:
            return {"held-out fold": held_out, "test cases": test, "calibration": None, "shift": shift}
        calibrated = out / "predictions_ms_calibrated"
        cal["test"] = assess_calibration(fold_dir.parent, cal, calibrated, data / "labelsTs")
        # against the threshold that the lesion matching chose on the same held-out cases
        matching = json.loads((fold_dir.parent / "lesion_matching.json").read_text())["threshold"]
        plain = assess_calibration(fold_dir.parent, {**cal, "thresholds": {"all": matching}}, calibrated,
                                   data / "labelsTs")
        cal["test"]["naive"] = {"threshold": matching, "empirical_risk": plain["empirical_risk"],
                                "fp_per_case": plain["fp_per_case"]}
    return {"held-out fold": held_out, "test cases": test, "calibration": cal, "shift": shift}


def shift_check(args, out: Path, data: Path, model_dir: Path) -> dict:
    """Add ``args.shift_cases`` unlabelled in-distribution cases to the held-out fold as the shift
    check's comparison cases, then predict the first test case under every shift of the demo
    generators; returns the shifted cases' prediction summary and the number of comparison cases."""
    import volseg
    from volseg.demo import generate_ms_dataset
    from volseg.demo.shifts import SHIFTS, write_shifted
    from volseg.shift.check import fit_shift_calibration

    extra = out / "data" / "ms_demo_unlabelled"
    generate_ms_dataset(extra, num_cases=0, num_test=args.shift_cases, seed=args.seed + 1)
    volseg.predict([extra / "imagesTs"], out / "predictions_ms_unlabelled", model_dir)
    cal = fit_shift_calibration(model_dir, [out / "predictions_ms_unlabelled" / "summary.json"])
    first = sorted(p.name[:-len("_0000.nii.gz")] for p in (data / "imagesTs").glob("*_0000.nii.gz"))[0]
    shifted = out / "data" / "ms_demo_shifted"
    for k, name in enumerate(SHIFTS):
        write_shifted(data / "imagesTs", shifted, [first], name, seed=args.seed + k, tag=True)
    summary = volseg.predict([shifted], out / "predictions_ms_shifted", model_dir)
    return {"calibration_cases": len(cal["cases"]), "case": first, "shifted": summary}


def calibrate(model_dir: Path, risk: str, alpha: float) -> dict | None:
    """Calibrate at ``alpha``, or at the smallest larger level with a finite threshold on the few
    held-out cases of the demo (n cases allow alpha >= 1 / (n + 1)); None when none up to 0.5 has one."""
    import volseg
    from volseg.errors import VolsegError

    for level in sorted({alpha, 0.25, 1 / 3, 0.5}):
        if level < alpha:
            continue
        try:
            cal = volseg.calibrate(model_dir, risk, level)
        except VolsegError as e:
            if "calibration cases" not in str(e):
                raise
            print(f"   alpha {level:.2f} needs more calibration cases; trying a larger one")
            continue
        print(f"   {cal['guarantee']}")
        return cal
    print(f"   {model_dir}: no level up to 0.5 can be calibrated on its held-out cases; skipping calibration")
    return None


def run_lung(args, out: Path, timings: dict) -> dict:
    """The lung nodule detection job; returns the FROC summary of the test cases."""
    import volseg
    from volseg.conformal.calibrate import assess_calibration
    from volseg.demo import generate_lung_dataset
    from volseg.evaluation.detection import evaluate_detection_csv
    from volseg.planning.plans import save_plans
    from volseg.planning.summary import plan_table

    data, plan_dir = out / "data" / "lung_demo", out / "plan_lung"
    with stage("lung: demo data", timings):
        generate_lung_dataset(data, num_cases=args.lung_cases, num_test=args.lung_test, seed=args.seed)
    with stage("lung: plan", timings):
        plans = volseg.plan(data, plan_dir, device="cpu")
        # an edit of the plan, as a user would make it: mirror only along x at test time (2 passes
        # instead of 8), to fit the CPU budget of the main job
        plans["configurations"]["3d_cpu"]["inference"]["mirror_axes"] = [2]
        save_plans(plans, plan_dir / "plans.json")
        print(plan_table(plans))
    with stage("lung: train", timings):  # ends with FROC on the held-out fold and the detection sweep
        fold_dir = volseg.train(plan_dir, fold=0, epochs=args.lung_epochs, iterations=args.iters)
        note_learned_nothing(fold_dir)
    with stage("lung: calibrate", timings):  # missed nodules per scan, on the held-out fold's candidates
        cal = calibrate(fold_dir.parent, "box_fnr", args.alpha)
    sweep = json.loads((fold_dir.parent / "detection_sweep.json").read_text())
    calibrated = out / "predictions_lung_calibrated"
    with stage("lung: predict", timings):  # the calibrated boxes from the same forward passes
        both = {"calibrated_out": str(calibrated)} if cal is not None else {}
        volseg.predict([data / "imagesTs"], out / "predictions_lung", fold_dir.parent, **both)
    with stage("lung: evaluate", timings):
        summary = evaluate_detection_csv(out / "predictions_lung" / "candidates.csv", data / "annotationsTs.csv",
                                         out / "evaluation_lung", scans=data / "scansTs.txt")
        summary["calibration"] = cal
        if cal is None:
            return summary
        annotations = data / "annotationsTs.csv"
        cal["test"] = assess_calibration(fold_dir.parent, cal, calibrated, annotations)
        # the plain boxes are those scoring at least the detection sweep's threshold
        plain = assess_calibration(fold_dir.parent, {**cal, "thresholds": {"all": sweep["score_threshold"]}},
                                   out / "predictions_lung", annotations)
        cal["test"]["naive"] = {"threshold": sweep["score_threshold"], "empirical_risk": plain["empirical_risk"],
                                "fp_per_case": plain["fp_per_case"]}
        summary["calibration"] = cal
        return summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="demo_run", help="output folder (default demo_run)")
    ap.add_argument("--dataset", choices=["all", "ms", "lung"], default="all",
                    help="which demo: MS segmentation, lung nodule detection, or both (default)")
    ap.add_argument("--cases", type=int, default=12, help="training cases of the MS demo (default 12)")
    ap.add_argument("--ms-test", type=int, default=8, help="labelled test cases of the MS demo (default 8)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=18,
                    help="MS training epochs (default 18, a fixed budget of 360 iterations, so the scores do not "
                         "depend on the machine's speed; the plan says 30)")
    ap.add_argument("--iters", type=int, default=20, help="iterations per epoch (default 20)")
    ap.add_argument("--train-minutes", type=float, default=0.0,
                    help="optional time limit of the MS training: fewer epochs on a slower machine, so the scores "
                         "then depend on its speed (default 0: no limit)")
    ap.add_argument("--lung-cases", type=int, default=20, help="training cases of the lung demo (default 20)")
    ap.add_argument("--lung-test", type=int, default=8, help="annotated test cases of the lung demo (default 8)")
    ap.add_argument("--alpha", type=float, default=0.1,
                    help="risk level of the calibrated thresholds (missed lesions per case, missed nodules per "
                         "scan); raised to the smallest level the held-out fold can calibrate (default 0.1)")
    ap.add_argument("--shift-cases", type=int, default=20,
                    help="unlabelled in-distribution MS cases that, with the held-out fold, the shift check compares "
                         "new cases with (default 20: enough for --shift-alpha 0.05)")
    ap.add_argument("--lung-epochs", type=int, default=20,
                    help="lung detector training epochs (default 20: 400 iterations)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out)
    timings: dict[str, float] = {}
    print(expected_duration(args.dataset), flush=True)
    ms = run_ms(args, out, timings) if args.dataset in ("all", "ms") else None
    lung = run_lung(args, out, timings) if args.dataset in ("all", "lung") else None
    print_results(ms, lung, timings, out)
    for line in FAILURES:
        print(f"error: {line}")
    return 3 if FAILURES else 0


# minutes of each part with the default settings, measured from a fresh clone with nothing else
# running; other machines scale with their speed, the scores do not (a fixed number of iterations)
MEASURED_MINUTES = {"a 2-core Intel Xeon (AVX-512, AMX)": {"ms": 4.9, "lung": 5.4},
                    "a 2-core AMD EPYC (AVX-512)": {"ms": 8.2, "lung": 8.7}}


def expected_duration(dataset: str) -> str:
    """The line printed first: about how long the job takes, and that its scores do not depend on it."""
    parts = ["ms", "lung"] if dataset == "all" else [dataset]
    times = [f"{sum(m[p] for p in parts):.0f} minutes on {name}" for name, m in MEASURED_MINUTES.items()]
    return (f"expected duration: about {' and '.join(times)}, with nothing else running; a slower machine "
            "takes longer with the same scores (a fixed number of training iterations), while another kind of "
            "CPU rounds differently and moves them somewhat")


def _num(value) -> str:
    return "–" if value is None or value != value else f"{value:.2f}"


def print_calibration(name: str, cal: dict, what: str) -> None:
    """The calibrated threshold, its guarantee, and its risk and price on the test cases against the plain one."""
    if cal is None:
        return
    test, t = cal["test"], cal["thresholds"]["all"]
    print(f"\n== {name}: calibrated threshold (conformal risk control on {cal['n']} held-out cases) ==")
    print(cal["guarantee"])
    print(f"{'threshold':<12}{'test ' + cal['risk']:>16}{'FP ' + what + '/case':>20}")
    print(f"{t:<12.2f}{test['empirical_risk'].get('all', float('nan')):>16.3f}{test['fp_per_case']:>20.2f}")
    naive = test["naive"]
    print(f"{naive['threshold']:<12.2f}{naive['empirical_risk'].get('all', float('nan')):>16.3f}"
          f"{naive['fp_per_case']:>20.2f}   (the plain prediction's threshold)")


def print_shift(shift: dict) -> None:
    """Which shifted inputs the check flagged, and how many unshifted test cases."""
    from volseg.shift.check import describe_flag

    alpha = shift["shifted"]["shift"]["alpha"]
    test = shift["test"]
    flagged = test.get("shift", {}).get("flagged", [])
    print(f"\n== MS: input-shift check ({shift['calibration_cases']} in-distribution cases to compare with, "
          f"alpha {alpha:g}) ==")
    print(f"unshifted test cases flagged: {len(flagged)} of {len(test['cases'])}")
    print(f"{shift['case']} under each shift of the demo generators:")
    for case_id, rec in shift["shifted"]["cases"].items():
        r = rec.get("shift")
        if r is None:
            print(f"  {case_id}: {rec['status']} {rec.get('error', '')}")
        elif r.get("flagged"):
            print(f"  flagged      {describe_flag(case_id, r, alpha)}")
        else:
            print(f"  not flagged  {case_id} (p {r.get('p_value', float('nan')):.3g})")


def print_results(ms: dict | None, lung: dict | None, timings: dict, out: Path) -> None:
    """Dice per class and lesion-wise F1 (MS), CPM and FROC points (lung), time per stage."""
    if ms is not None:
        for part, summary in ms.items():
            if part in ("calibration", "shift"):
                continue
            cases = summary["counts"]["evaluated"]
            print(f"\n== MS lesions: {part} ({cases} cases; lesion-wise: MSSEG-2 matching) ==")
            print(f"{'label':<20}{'Dice':>7}{'F1':>7}{'sens':>7}{'PPV':>7}{'nFP*':>7}")
            for name, rec in summary["labels"].items():
                les = rec.get("lesions", {})
                pooled = les.get("pooled", {})
                free = les.get("lesion_free") or {}
                cells = [rec["stats"]["dice"]["mean"], pooled.get("f1"), pooled.get("sensitivity"),
                         pooled.get("precision"), free.get("nFP_mean")]
                print(f"{name:<20}" + "".join(f"{_num(v):>7}" for v in cells))
        print("* nFP: mean number of false-positive lesions on the cases without a lesion of that kind")
        print_calibration("MS lesions", ms["calibration"], "lesions")
        print_shift(ms["shift"])
    if lung is not None:
        print(f"\n== lung nodules: {lung['counts']['scans']} test scans, {lung['counts']['nodules']} nodules ==")
        lo, hi = lung["cpm_ci"]
        print(f"CPM {lung['cpm']:.3f}  (95% CI {lo:.3f}–{hi:.3f})")
        print("sensitivity at FP/scan  " + "  ".join(f"{r}: {s:.2f}" for r, s in lung["sensitivity"].items()))
        print_calibration("lung nodules", lung["calibration"], "boxes")
    print(f"\n{'stage':<22}{'seconds':>8}")
    for name, sec in timings.items():
        print(f"{name:<22}{sec:>8.1f}")
    print(f"{'total':<22}{sum(timings.values()):>8.1f}")
    print(f"\noutputs: {out}  (model folders under plan_*/models/, evaluations in evaluation_*/)")


if __name__ == "__main__":
    sys.exit(main())
