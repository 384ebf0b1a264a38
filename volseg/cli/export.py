"""``volseg export``: a trained model's networks as ONNX files, one per fold."""

from __future__ import annotations

import argparse


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "export", help="write a model's networks as ONNX files (one per fold) that run without volseg",
        description="Export each fold's network to OUT/<configuration>_fold_<K>.onnx: input 'image' float32 "
        "(N, C, Z, Y, X) preprocessed tiles of the plan's patch, output 'logits' (N, K, Z, Y, X). The file's "
        "metadata holds the channel names, spacing, normalization, labels and sliding-window settings "
        "(see the README).")
    p.add_argument("model", help="model folder written by volseg train")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--format", choices=["onnx"], default="onnx", help="file format (default onnx)")
    p.add_argument("-f", "--folds", nargs="+", help="folds to export (default: every trained fold)")
    p.add_argument("--checkpoint", choices=["final", "best", "latest"], default="final",
                   help="which checkpoint of each fold (default final)")
    return p


def run(args: argparse.Namespace) -> int:
    from volseg.runtime.model_export import export_model

    for path in export_model(args.model, args.out, args.folds, args.checkpoint):
        print(f"wrote {path}")
    return 0
