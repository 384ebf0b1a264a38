"""``volseg evaluate``: score predictions against references and write a report."""

from __future__ import annotations

import argparse


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "evaluate", help="score predicted label maps against references (Dice, surface Dice, HD95, lesions), "
        "or detections against nodules (LUNA16 FROC, CPM)",
        description="Segmentation (--pred): score PRED/CASE.nii.gz against REF/CASE.nii.gz for every label and "
        "region: Dice, IoU, normalized surface Dice, HD95 and average surface distance (mm), volumes, and "
        "lesion-wise detection. Writes OUT/summary.json, OUT/cases.csv and OUT/plots/. Exits with status 1 when "
        "a case failed or was missing on either side (after writing the report). Detection (--candidates): "
        "LUNA16 FROC of a candidates.csv against an annotations.csv: sensitivities at 1/8 to 8 false positives "
        "per scan and their mean (CPM), with bootstrap intervals. Writes OUT/summary.json, OUT/nodules.csv and "
        "OUT/froc.png. See docs/evaluate.md.")
    p.add_argument("--pred", metavar="DIR", help="folder of predicted label maps (segmentation mode)")
    p.add_argument("--ref", metavar="DIR", help="folder of reference label maps (default: DATASET/labelsTr)")
    p.add_argument("--dataset", metavar="DIR",
                   help="dataset folder whose dataset.json declares labels and regions (default: score every "
                   "value found, named by its value)")
    p.add_argument("--regions", nargs="+", default=[], metavar="NAME=V1,V2",
                   help='extra regions scored as the union of label values, e.g. "lesions=1,2"')
    p.add_argument("--tolerance-mm", type=float, default=1.0, help="surface Dice tolerance in mm (default 1.0)")
    p.add_argument("-o", "--out", required=True, metavar="OUT", help="output folder")
    lw = p.add_argument_group("lesion-wise metrics (default: on for task \"longitudinal\")")
    lw.add_argument("--lesion-wise", dest="lesion_wise", action="store_true", default=None,
                    help="add lesion-wise detection metrics")
    lw.add_argument("--no-lesion-wise", dest="lesion_wise", action="store_false", help="leave them out")
    lw.add_argument("--lesion-rule", choices=("anima", "dilated"), default="anima",
                    help="lesion matching rule: anima (MSSEG-2, animaSegPerfAnalyzer; default) or dilated")
    lw.add_argument("--connectivity", type=int, choices=(6, 18, 26), default=None,
                    help="voxel connectivity of a lesion (default: the rule's, 6 for anima, 26 for dilated)")
    lw.add_argument("--min-lesion-mm3", type=float, default=3.0,
                    help="ignore small lesions on both sides (default 3 mm³): anima keeps those strictly "
                    "larger, dilated those at least this large")
    lw.add_argument("--alpha", type=float, default=0.10,
                    help="anima: a lesion must be covered by strictly more than this fraction (default 0.10)")
    lw.add_argument("--beta", type=float, default=0.70,
                    help="anima: largest fraction of an examined lesion of the other side lying outside "
                    "this side's lesions (default 0.70)")
    lw.add_argument("--gamma", type=float, default=0.65,
                    help="anima: the other side's lesions are examined, largest overlap first, until they "
                    "make up this share of the overlap (default 0.65)")
    lw.add_argument("--min-overlap", type=float, default=0.10,
                    help="dilated: fraction of a lesion the other side must cover (default 0.10)")
    lw.add_argument("--min-inside", type=float, default=0.50,
                    help="dilated: fraction of the touching lesions of the other side that must lie inside "
                    "the dilated foreground (default 0.50)")
    lw.add_argument("--dilation-mm", type=float, default=1.0,
                    help="dilated: dilation of the foreground for --min-inside, in mm (default 1.0)")
    p.add_argument("--worst", type=int, default=3, help="overlay figures of the N lowest-Dice cases per label "
                   "(default 3, 0: none)")
    p.add_argument("--images", metavar="DIR", help="images (CASE_0000.nii.gz) to show under the overlays")
    p.add_argument("--no-plots", action="store_true", help="write no figures")
    p.add_argument("-j", "--workers", type=int, default=2, help="worker processes (default 2)")
    det = p.add_argument_group("detection mode (LUNA16 FROC; world coordinates x, y, z in mm)")
    det.add_argument("--candidates", metavar="CSV", help="detections: seriesuid, coordX, coordY, coordZ, probability")
    det.add_argument("--annotations", metavar="CSV", help="nodules: seriesuid, coordX, coordY, coordZ, diameter_mm")
    det.add_argument("--excluded", metavar="CSV", help="findings whose hits are ignored (annotations_excluded.csv, "
                     "same columns as --annotations)")
    det.add_argument("--scans", metavar="FILE|DIR", help="scans to score, those without nodules included: a file "
                     "with one seriesuid per line, or a folder of images (.mhd, .nii.gz, ...) named by seriesuid "
                     "(default: every seriesuid of --annotations and --candidates)")
    det.add_argument("--max-candidates", type=int, default=100, metavar="N",
                     help="candidates kept per scan, most probable first (default 100)")
    det.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                     help="bootstrap resamples of the scans for the 95%% intervals (default 1000, 0: none)")
    det.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    det.add_argument("--interpolation", choices=("linear", "step"), default="linear",
                     help="sensitivity between operating points: linear as LUNA16 (default), or step (the "
                     "best point not above the FP rate)")
    return p


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from volseg.errors import VolsegError
    from volseg.evaluation import LesionConfig, evaluate_folders
    from volseg.evaluation.labels import parse_region

    if args.candidates is not None or args.annotations is not None:
        return _run_detection(args)
    if args.pred is None:
        raise VolsegError(None, "give --pred DIR (segmentation) or --candidates CSV with --annotations CSV (detection)")
    if args.excluded is not None or args.scans is not None:
        raise VolsegError(None, "--excluded and --scans belong to the detection mode: give --candidates and --annotations")
    ref = args.ref or (str(Path(args.dataset) / "labelsTr") if args.dataset else None)
    if ref is None:
        raise VolsegError(None, "--ref is required unless --dataset is given")
    regions = dict(parse_region(r) for r in args.regions)
    try:
        cfg = LesionConfig(connectivity=args.connectivity, min_volume_mm3=args.min_lesion_mm3,
                           min_overlap=args.min_overlap, min_inside=args.min_inside, dilation_mm=args.dilation_mm,
                           rule=args.lesion_rule, alpha=args.alpha, beta=args.beta, gamma=args.gamma)
    except ValueError as e:
        raise VolsegError(None, str(e)) from None
    summary = evaluate_folders(args.pred, ref, args.out, dataset_dir=args.dataset, regions=regions,
                               tolerance_mm=args.tolerance_mm, lesion_wise=args.lesion_wise, lesion_cfg=cfg,
                               num_workers=args.workers, worst=args.worst, images_dir=args.images, plots=not args.no_plots)
    print(_table(summary))
    counts = summary["counts"]
    print(f"report written to {Path(args.out) / 'summary.json'}")
    return 1 if counts["failed"] or counts["missing_predictions"] or counts["missing_references"] else 0


def _run_detection(args: argparse.Namespace) -> int:
    from pathlib import Path

    from volseg.errors import VolsegError
    from volseg.evaluation.detection import evaluate_detection_csv

    if args.pred is not None:
        raise VolsegError(None, "--pred (segmentation) and --candidates (detection) cannot be combined")
    if args.candidates is None or args.annotations is None:
        raise VolsegError(None, "the detection mode needs both --candidates and --annotations")
    if args.max_candidates < 1 or args.bootstrap < 0:
        raise VolsegError(None, f"--max-candidates must be >= 1 and --bootstrap >= 0, got {args.max_candidates} "
                          f"and {args.bootstrap}")
    summary = evaluate_detection_csv(args.candidates, args.annotations, args.out, excluded_csv=args.excluded,
                                     scans=args.scans, max_candidates=args.max_candidates, n_bootstrap=args.bootstrap,
                                     seed=args.seed, interpolation=args.interpolation, plots=not args.no_plots)
    print(_froc_table(summary))
    print(f"report written to {Path(args.out) / 'summary.json'}")
    return 0


def _froc_table(summary: dict) -> str:
    """CPM with its interval, then the sensitivity at each FP rate."""

    def f(v):
        return "-" if v is None else f"{v:.3f}"

    def ci(pair):
        return "" if pair is None or None in pair else f"{f(pair[0])}-{f(pair[1])}"

    c = summary["counts"]
    cpm_ci = ci(summary["cpm_ci"])
    lines = [f"CPM {f(summary['cpm'])}" + (f" (95% CI {cpm_ci})" if cpm_ci else "")
             + f"  ·  {c['scans']} scans, {c['nodules']} nodules ({c['nodules_hit']} hit), "
             f"{c['false_positives']} false positives, {c['ignored_on_excluded']} on excluded findings ignored",
             f"{'FP/scan':>8} {'sensitivity':>12} {'95% CI':>12}"]
    for rate, s in summary["sensitivity"].items():
        lines.append(f"{rate:>8} {f(s):>12} {ci(summary['sensitivity_ci'][rate]):>12}")
    return "\n".join(lines)


def _table(summary: dict) -> str:
    """A short text table of the per-label means and of the problems."""
    import math

    def f(v, fmt="{:.3f}"):
        return "-" if v is None or math.isnan(v) else fmt.format(v)

    lines = [f"{'label':<20} {'Dice':>6} {'NSD':>6} {'HD95mm':>8} {'cases':>6} {'lesion F1':>10}"]
    for name, s in summary["labels"].items():
        m = s["mean"]
        f1 = s.get("lesions", {}).get("pooled", {}).get("f1")
        lines.append(f"{name:<20} {f(m['dice']):>6} {f(m['surface_dice']):>6} {f(m['hd95_mm'], '{:.2f}'):>8} "
                     f"{s['counts']['cases']:>6} {f(f1):>10}")
    c = summary["counts"]
    lines.append(f"evaluated {c['evaluated']}, failed {c['failed']}, missing predictions "
                 f"{c['missing_predictions']}, missing references {c['missing_references']}")
    lines += [f"failed: {x['error']}" for x in summary["failed"]]
    for side in ("predictions", "references"):
        if summary["missing"][side]:
            lines.append(f"missing {side}: {', '.join(summary['missing'][side])}")
    return "\n".join(lines)
