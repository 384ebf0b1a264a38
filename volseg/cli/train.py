"""``volseg train``: train one fold (or all folds) of a planned configuration."""

from __future__ import annotations

import argparse


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "train", help="train a 3D U-Net fold from a plan folder",
        description="Train one cross-validation fold of a configuration of the plan in PLAN_DIR (written by "
        "volseg plan). Checkpoints are weights-only and written atomically; --resume continues after a kill. "
        "For several GPUs or nodes launch with torchrun, e.g. torchrun --nproc_per_node 4 -m volseg train ...")
    p.add_argument("plan_dir", help="folder written by volseg plan (plans.json, preprocessed/)")
    p.add_argument("-o", "--out", help="model folder (default: PLAN_DIR/models/<configuration>)")
    p.add_argument("-f", "--fold", default="0", help="fold 0..4, 'all' (every case, no validation), or a "
                   "comma-separated list such as 0,1,2,3,4 (default 0)")
    p.add_argument("-c", "--configuration", help="configuration (default: the plan's default_configuration)")
    p.add_argument("--epochs", type=int, help="override the plan's number of epochs")
    p.add_argument("--iters", type=int, help="override the plan's iterations per epoch")
    p.add_argument("--time-limit", type=float, metavar="MINUTES",
                   help="fit training into this many minutes: after the first epoch, lower the number of "
                        "epochs to what fits (the final validation is not counted)")
    p.add_argument("--resume", action="store_true", help="continue from the fold's checkpoint_latest.pt")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: cuda if available")
    p.add_argument("-j", "--workers", type=int, help="background augmentation processes (default: the plan's)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, sampling and augmentation (default 0)")
    p.add_argument("--no-validation", action="store_true",
                   help="skip the final sliding-window validation of the held-out cases (and the post-processing choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def run(args: argparse.Namespace) -> int:
    from volseg.training.run import train

    if args.time_limit is not None and args.time_limit <= 0:
        raise SystemExit(f"volseg train: error: --time-limit must be a positive number of minutes, got {args.time_limit}")
    folds = ["all"] if args.fold == "all" else [f.strip() for f in str(args.fold).split(",") if f.strip()]
    for fold in folds:
        if fold != "all" and not fold.isdigit():
            raise SystemExit(f"volseg train: error: --fold must be a number, a list of numbers or 'all', got {fold!r}")
        out = train(args.plan_dir, args.out, fold=fold, config_name=args.configuration, epochs=args.epochs,
                    iterations=args.iters, time_limit_minutes=args.time_limit,
                    resume_training=args.resume, device=args.device,
                    num_workers=args.workers, seed=args.seed, progress=not args.no_progress,
                    validate=not args.no_validation)
        print(f"fold {fold} trained: {out}")
    return 0
