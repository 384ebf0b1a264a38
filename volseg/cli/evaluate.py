"""``volseg evaluate``: score predictions against references and write a report."""

from __future__ import annotations

import argparse


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "evaluate", help="score predicted label maps against references (Dice, surface Dice, HD95, lesions)",
        description="Score PRED/CASE.nii.gz against REF/CASE.nii.gz for every label and region: Dice, IoU, "
        "normalized surface Dice, HD95 and average surface distance (mm), volumes, and lesion-wise detection. "
        "Writes OUT/summary.json, OUT/cases.csv and OUT/plots/. Exits with status 1 when a case failed or "
        "was missing on either side (after writing the report). See docs/evaluate.md.")
    p.add_argument("--pred", required=True, metavar="DIR", help="folder of predicted label maps")
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
    lw.add_argument("--connectivity", type=int, choices=(6, 18, 26), default=26,
                    help="voxel connectivity of a lesion (default 26)")
    lw.add_argument("--min-lesion-mm3", type=float, default=3.0,
                    help="ignore lesions smaller than this on both sides (default 3 mm³)")
    lw.add_argument("--min-overlap", type=float, default=0.10,
                    help="fraction of a lesion the other side must cover (default 0.10)")
    lw.add_argument("--min-inside", type=float, default=0.50,
                    help="fraction of the touching lesions of the other side that must lie inside the "
                    "dilated foreground (default 0.50)")
    lw.add_argument("--dilation-mm", type=float, default=1.0,
                    help="dilation of the foreground for --min-inside, in mm (default 1.0)")
    p.add_argument("--worst", type=int, default=3, help="overlay figures of the N lowest-Dice cases per label "
                   "(default 3, 0: none)")
    p.add_argument("--images", metavar="DIR", help="images (CASE_0000.nii.gz) to show under the overlays")
    p.add_argument("--no-plots", action="store_true", help="write no figures")
    p.add_argument("-j", "--workers", type=int, default=2, help="worker processes (default 2)")
    return p


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from volseg.errors import VolsegError
    from volseg.evaluation import LesionConfig, evaluate_folders
    from volseg.evaluation.labels import parse_region

    ref = args.ref or (str(Path(args.dataset) / "labelsTr") if args.dataset else None)
    if ref is None:
        raise VolsegError(None, "--ref is required unless --dataset is given")
    regions = dict(parse_region(r) for r in args.regions)
    try:
        cfg = LesionConfig(args.connectivity, args.min_lesion_mm3, args.min_overlap, args.min_inside,
                           args.dilation_mm)
    except ValueError as e:
        raise VolsegError(None, str(e)) from None
    summary = evaluate_folders(args.pred, ref, args.out, dataset_dir=args.dataset, regions=regions,
                               tolerance_mm=args.tolerance_mm, lesion_wise=args.lesion_wise, lesion_cfg=cfg,
                               num_workers=args.workers, worst=args.worst, images_dir=args.images, plots=not args.no_plots)
    print(_table(summary))
    counts = summary["counts"]
    print(f"report written to {Path(args.out) / 'summary.json'}")
    return 1 if counts["failed"] or counts["missing_predictions"] or counts["missing_references"] else 0


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
