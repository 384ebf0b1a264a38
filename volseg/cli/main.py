"""Entry point of the ``volseg`` command.

Each subcommand lives in its own module of :mod:`volseg.cli` with two functions:
``add_parser(subparsers)`` (options only, no heavy imports) and ``run(args) -> int``
(imports what it needs and calls the library). A :class:`~volseg.errors.VolsegError`
becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from volseg import __version__
from volseg.errors import VolsegError

# (command, module) in the order ``volseg --help`` lists them.
COMMANDS = (
    ("demo-data", "volseg.cli.demo_data"),
    ("import-luna16", "volseg.cli.import_luna16"),
    ("import-nnunet", "volseg.cli.import_nnunet"),
    ("plan", "volseg.cli.plan"),
    ("train", "volseg.cli.train"),
    ("predict", "volseg.cli.predict"),
    ("export", "volseg.cli.export"),
    ("evaluate", "volseg.cli.evaluate"),
    ("calibrate", "volseg.cli.calibrate"),
    ("calibrate-shift", "volseg.cli.calibrate_shift"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="volseg",
        description="Self-configuring 3D segmentation and detection on NIfTI folders: "
        "demo-data → plan → train → predict → evaluate, calibrate.",
    )
    parser.add_argument("--version", action="version", version=f"volseg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name == module:  # command not built into this installation
                continue
            raise
        p = mod.add_parser(sub)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(message)s", stream=sys.stderr)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 1
    try:
        return int(args._run(args) or 0)
    except VolsegError as e:
        print(f"volseg {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"volseg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
