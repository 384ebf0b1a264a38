"""``volseg train``: train one fold (or all folds) of a planned configuration."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "train", help="train a 3D U-Net fold from a plan folder",
        description="Train one cross-validation fold of a configuration of the plan in PLAN_DIR (written by "
        "volseg plan). Checkpoints are weights-only and written atomically; --resume continues after a kill. "
        "For several GPUs or nodes launch with torchrun, e.g. torchrun --nproc_per_node 4 -m volseg train ...")
    p.add_argument("plan_dir", help="folder written by volseg plan (plans.json, preprocessed/)")
    p.add_argument("-o", "--out", help="model folder (default: PLAN_DIR/models/<configuration>)")
    p.add_argument("-f", "--fold", type=fold_list, default="0", help="fold 0..4, 'all' (every case, no validation), or a "
                   "comma-separated list such as 0,1,2,3,4 (default 0)")
    p.add_argument("-c", "--configuration", help="configuration (default: the plan's default_configuration)")
    p.add_argument("--epochs", type=positive_int, help="override the plan's number of epochs")
    p.add_argument("--iters", type=positive_int, help="override the plan's iterations per epoch")
    p.add_argument("--time-limit", type=positive_float, metavar="MINUTES",
                   help="fit training into this many minutes: after the first epoch, lower the number of "
                        "epochs to what fits (the final validation is not counted)")
    p.add_argument("--resume", action="store_true", help="continue from the fold's checkpoint_latest.pt")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: cuda if available")
    p.add_argument("-j", "--workers", type=non_negative_int, help="background augmentation processes (default: the plan's)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, sampling and augmentation (default 0)")
    p.add_argument("--no-validation", action="store_true",
                   help="skip the final sliding-window validation of the held-out cases (and the post-processing choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _number(convert, low: float, inclusive: bool, what: str):
    """An argparse type: ``convert(text)``, finite and at least (or, not ``inclusive``, above) ``low``;
    anything else is a usage error (exit status 2) saying ``expected <what>``."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not (value >= low if inclusive else value > low) or value == float("inf"):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value

    return parse


positive_int = _number(int, 1, True, "a positive integer")
non_negative_int = _number(int, 0, True, "an integer >= 0")
positive_float = _number(float, 0.0, False, "a positive number")


def fold_list(text: str) -> list[str]:
    """argparse type of ``--fold``: "all", a fold number, or comma-separated fold numbers.

    Example:
        >>> fold_list("0, 2")
        ['0', '2']
    """
    folds = [f.strip() for f in text.split(",") if f.strip()]
    bad = [f for f in folds if f != "all" and not (f.isascii() and f.isdigit())]
    if bad or not folds:
        raise argparse.ArgumentTypeError(
            f"expected a fold number, a comma-separated list of fold numbers or 'all', got {text!r}")
    return [str(int(f)) if f != "all" else f for f in folds]


def run(args: argparse.Namespace) -> int:
    from volseg.workflow import train_fold

    from volseg.training.progress import learned_nothing

    status = 0
    for fold in args.fold:
        out = train_fold(args.plan_dir, args.out, fold=fold, config_name=args.configuration, epochs=args.epochs,
                    iterations=args.iters, time_limit_minutes=args.time_limit,
                    resume_training=args.resume, device=args.device,
                    num_workers=args.workers, seed=args.seed, progress=not args.no_progress,
                    validate=not args.no_validation)
        print(f"fold {fold} trained: {out}")
        nothing = learned_nothing(out)
        if nothing:
            print(f"error: {nothing}", file=sys.stderr)
            status = 3
    return status
