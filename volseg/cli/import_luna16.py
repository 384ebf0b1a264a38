"""``volseg import-luna16``: build a detection dataset from LUNA16-style annotations."""

from __future__ import annotations

import argparse


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "import-luna16", help="build a detection dataset from LUNA16-style annotations (world mm) and scans",
        description="Convert scans (SERIESUID.mhd/.raw as LUNA16 ships them, .mha, .nii.gz or .nii, searched in "
        "all subfolders) and annotations.csv (seriesuid, coordX, coordY, coordZ in world mm, diameter_mm) into a "
        "dataset folder in nnU-Net v2 raw layout: one sphere per nodule in labelsTr/CASE.nii.gz, excluded "
        "findings as ignore regions, scans without findings as negatives. Inputs are never modified. "
        "See docs/formats.md.")
    p.add_argument("--annotations", required=True, metavar="CSV", help="annotations.csv")
    p.add_argument("--excluded", metavar="CSV",
                   help="annotations_excluded.csv: findings drawn as ignore regions (negative diameter: 10 mm)")
    p.add_argument("--images", required=True, metavar="DIR", help="folder of scans (subfolders are searched)")
    p.add_argument("-o", "--out", required=True, metavar="OUT",
                   help="dataset folder to write (new, empty, or a previous import-luna16 output)")
    p.add_argument("--case-ids", choices=["auto", "seriesuid", "index"], default="auto",
                   help="case ids: the seriesuids, case_0000…, or the seriesuids when all are safe file names "
                   "(default auto); OUT/case_ids.csv maps them")
    p.add_argument("--skip-missing", action="store_true",
                   help="drop CSV rows whose seriesuid has no image (e.g. only some subsets downloaded)")
    p.add_argument("--name", help="dataset name in dataset.json (default: the folder name of OUT)")
    p.add_argument("-j", "--workers", type=int, default=1, help="worker processes (default 1)")
    return p


def run(args: argparse.Namespace) -> int:
    from volseg.io.luna16 import import_luna16

    out = import_luna16(args.annotations, args.images, args.out, excluded=args.excluded, case_ids=args.case_ids,
                        skip_missing=args.skip_missing, name=args.name, num_workers=args.workers)
    print(f"detection dataset written to {out}")
    return 0
