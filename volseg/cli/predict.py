"""``volseg predict``: segment NIfTI cases with a trained model folder."""

from __future__ import annotations

import argparse


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "predict", help="predict label maps (and probability/uncertainty maps) with a trained model",
        description="Sliding-window prediction with Gaussian weighting, mirroring TTA and fold ensembling. Each "
        "output has exactly the input's size, spacing, origin and direction. A bad case is reported and skipped; "
        "the exit status is non-zero if any case failed. Outputs are written atomically; inputs are never touched.")
    p.add_argument("-i", "--input", nargs="+", required=True,
                   help="folder(s) of CASE_0000.nii.gz-style files (one per channel), or image files")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("-m", "--model", required=True, help="model folder written by volseg train")
    p.add_argument("-f", "--folds", nargs="+", help="folds to ensemble (default: every trained fold)")
    p.add_argument("--checkpoint", choices=["final", "best", "latest"], default="final",
                   help="which checkpoint of each fold (default final)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: cuda if available")
    p.add_argument("--step", type=float, help="tile step as a fraction of the patch (default: the plan's, 0.5)")
    p.add_argument("--tile-batch", type=int, metavar="N",
                   help="tiles per forward pass (default: the plan's inference.tile_batch, on the CPU its "
                        "tile_batch_cpu when it has one)")
    p.add_argument("--no-tta", action="store_true", help="no mirroring test-time augmentation")
    p.add_argument("--save-probabilities", nargs="?", const="volseg", choices=["volseg", "nnunet"],
                   help="also write the probabilities, (K, Z, Y, X) on the input grid: maps/CASE_probabilities.npz "
                        "(fp16; the default layout), or with 'nnunet' CASE.npz beside the label map (fp16, key "
                        "'probabilities'), where nnU-Net v2's scripts look for them")
    p.add_argument("--save-uncertainty", action="store_true",
                   help="also write maps/CASE_entropy (entropy of the fused prediction), maps/CASE_expected_entropy "
                        "(mean entropy of the ensemble members, aleatoric) and maps/CASE_mutual_information (where "
                        "folds and mirrors disagree, epistemic), in nats, and each case's mean uncertainty in "
                        "summary.json")
    p.add_argument("--no-postprocessing", action="store_true",
                   help="skip the rules fitted on the held-out fold: connected-component rules; for detection, the "
                        "sweep's IoU thresholds, score threshold and minimum size")
    p.add_argument("--calibrated", action="store_true",
                   help="threshold at the calibrated value of MODEL/calibration.json (volseg calibrate) instead of the "
                        "argmax and post-processing; writes maps/CASE_possible (voxels the calibrated set adds)")
    p.add_argument("--calibrated-out", metavar="DIR",
                   help="also write the calibrated outputs (those of --calibrated) to DIR, with its own summary.json, "
                        "from the same forward passes as the plain outputs in -o (instead of predicting twice)")
    p.add_argument("--calibration", help="a calibration.json other than MODEL/calibration.json (implies --calibrated "
                                         "unless --calibrated-out is given)")
    p.add_argument("--memory-gb", type=float,
                   help="memory budget of the stitching buffers; above it slab mode is used (default: automatic)")
    p.add_argument("--backend", choices=["auto", "torch", "triton"], default="auto",
                   help="stitching kernels: Triton on CUDA, torch on the CPU (default auto)")
    p.add_argument("--runtime", choices=["auto", "torch", "openvino", "onnxruntime"], default="auto",
                   help="what runs the network's forward pass on the CPU: auto takes the fastest installed runtime "
                        "whose outputs match torch's on a check tile (volseg[cpu-fast] installs OpenVINO and ONNX "
                        "Runtime); a runtime that is missing or disagrees falls back to torch with a notice")
    p.add_argument("--precision", choices=["f32", "bf16"], default="f32",
                   help="bf16: reduced-precision forward pass (OpenVINO or torch autocast), used when at least 99%% of "
                        "its labels on the check tile are float32 torch's; the agreement is printed (default f32)")
    p.add_argument("--shift-alpha", type=level, default=0.05,
                   help="flag a case whose input looks unlike the training data at this false-alarm level: at most "
                        "this fraction of cases like the training data is flagged (default 0.05; needs MODEL/shift.json)")
    p.add_argument("--refuse-shifted", action="store_true",
                   help="write no outputs for a flagged case (status 'refused', non-zero exit); by default a flagged "
                        "case is predicted and written")
    p.add_argument("--no-shift-check", action="store_true",
                   help="do not compare the cases with the training data (saves the uncertainty maps' time)")
    p.add_argument("--shard", type=shard_arg, metavar="K/N",
                   help="predict only rank K's share of the cases (0 <= K < N), split by size so that ranks finish "
                        "together; under torchrun the rank and world size come from RANK and WORLD_SIZE. Each rank "
                        "writes summary.shard-K-of-N.json; the last to finish merges them into summary.json")
    p.add_argument("--resume", action="store_true", help="skip cases whose label file already exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def shard_arg(text: str):
    """An argparse type: ``K/N``."""
    from volseg.inference.shards import parse_shard

    try:
        return parse_shard(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def level(text: str) -> float:
    """An argparse type: a level strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a level in (0, 1), got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a level in (0, 1), got {text}")
    return value


def run(args: argparse.Namespace) -> int:
    from volseg.errors import VolsegError
    from volseg.model import load_model
    from volseg.inference.predictor import PredictOptions, predict_folder, resolve_device
    from volseg.runtime import RuntimeChoice

    if args.calibrated and args.calibrated_out:
        raise VolsegError(args.calibrated_out, "--calibrated writes only the calibrated outputs (to -o) and "
                          "--calibrated-out writes them beside the plain ones: give one of the two")
    if args.tile_batch is not None and args.tile_batch < 1:
        raise VolsegError(None, f"--tile-batch must be at least 1, got {args.tile_batch}")
    options = PredictOptions(step_fraction=args.step, tile_batch=args.tile_batch, tta=not args.no_tta,
                             save_probabilities=bool(args.save_probabilities),
                             probabilities_layout=args.save_probabilities or "volseg",
                             save_uncertainty=args.save_uncertainty, device=args.device, backend=args.backend,
                             memory_budget_gb=args.memory_gb, postprocess=not args.no_postprocessing,
                             calibrated=args.calibrated, calibration_file=args.calibration,
                             calibrated_out=args.calibrated_out,
                             shift_check=not args.no_shift_check, shift_alpha=args.shift_alpha,
                             refuse_shifted=args.refuse_shifted, runtime=args.runtime, precision=args.precision)
    from volseg.inference.shards import shard_from_env

    shard = args.shard or shard_from_env()
    model = load_model(args.model, args.folds, args.checkpoint, resolve_device(args.device))
    summary = predict_folder(args.input, args.out, model, options, resume=args.resume, progress=not args.no_progress,
                             shard=shard)
    counts = summary["counts"]
    refused = f", {counts['refused']} refused as shifted" if counts["refused"] else ""
    where = f" (shard {shard.index}/{shard.count})" if shard else ""
    print(f"{counts['done']} predicted, {counts['skipped']} skipped, {counts['failed']} failed{refused}{where} "
          f"→ {args.out}")
    if shard and summary["merged"]:
        print(f"every shard is done: {args.out}/summary.json merges the {shard.count} shards")
    print(RuntimeChoice(**summary["runtime"]).describe())
    calibration = summary.get("calibration")
    if args.calibrated_out:
        import json
        from pathlib import Path

        print(f"calibrated outputs → {args.calibrated_out}")
        cal_summary = Path(args.calibrated_out) / "summary.json"  # with a shard: once every shard is done
        calibration = json.loads(cal_summary.read_text())["calibration"] if cal_summary.is_file() else None
    if calibration:
        print(f"calibrated: {calibration['guarantee']}")
        if calibration.get("warning"):
            print(f"warning: {calibration['warning']}")
    for case_id, rec in summary["cases"].items():
        if rec["status"] == "failed":
            print(f"  failed {case_id}: {rec['error']}")
    print_shift(summary)
    return 1 if counts["failed"] or counts["refused"] else 0


def print_shift(summary: dict) -> None:
    """The exit summary's lines about the shift check: the flagged cases, one per line."""
    from volseg.shift.check import describe_flag

    shift = summary.get("shift")
    if not shift:
        return
    if shift.get("warning"):
        print(f"warning: {shift['warning']}")
    flagged = shift["flagged"]
    print(f"shift check: {len(flagged)} of {sum(1 for r in summary['cases'].values() if 'shift' in r)} cases flagged "
          f"as unlike the training data (--shift-alpha {shift['alpha']:g}, {shift['calibration_cases']} "
          f"in-distribution cases to compare with)")
    for case_id in flagged:
        print(f"  {describe_flag(case_id, summary['cases'][case_id]['shift'], shift['alpha'])}")
