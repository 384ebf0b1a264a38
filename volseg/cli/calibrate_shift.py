"""``volseg calibrate-shift``: the in-distribution cases that the shift check's p-values compare with."""

from __future__ import annotations

import argparse


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "calibrate-shift", help="add in-distribution cases to the shift check of a model (MODEL/shift.json)",
        description="The shift check of predict flags a case when it looks unlike cases the model was not trained "
        "on but that come from the training data's scanners and protocols. By default those are the held-out "
        "cases of the trained folds. Predict more such cases (no labels needed) with the settings you will use, "
        "then pass their output folders here: with n cases the smallest p-value is 1/(n+1), so --shift-alpha "
        "0.05 needs at least 19.")
    p.add_argument("model", help="model folder written by volseg train")
    p.add_argument("predictions", nargs="+", help="output folders of volseg predict (their summary.json)")
    p.add_argument("--no-out-of-fold", action="store_true", help="leave the folds' held-out cases out")
    return p


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from volseg.errors import ModelError
    from volseg.shift.check import fit_shift_calibration

    summaries = []
    for folder in args.predictions:
        path = Path(folder) / "summary.json"
        if not path.is_file():
            raise ModelError(folder, "no summary.json: not an output folder of volseg predict")
        summaries.append(path)
    cal = fit_shift_calibration(args.model, summaries, out_of_fold=not args.no_out_of_fold)
    if cal is None:
        raise ModelError(args.model, "no predicted case has shift scores; predict with this model's shift check on")
    print(f"{len(cal['cases'])} in-distribution cases ({cal['source']}); smallest p-value "
          f"{cal['smallest_p_value']:.3g} → {Path(args.model) / 'shift.json'}")
    return 0
