"""``volseg import-nnunet``: a trained nnU-Net v2 results folder as a volseg model folder."""

from __future__ import annotations

import argparse


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "import-nnunet", help="turn a trained nnU-Net v2 results folder into a volseg model folder",
        description="Map an nnU-Net v2 trainer folder (TRAINER__PLANS__CONFIGURATION holding plans.json, dataset.json "
        "and fold_K/checkpoint_final.pth) onto a volseg plan and network, so that volseg predict -m OUT runs it "
        "(runtime choice, uncertainty maps, calibration). Checkpoints are read with torch.load(weights_only=True) "
        "and a short allow-list of NumPy types; anything else in the pickle is refused. What volseg cannot "
        "represent exactly is refused with one line. See docs/formats.md.")
    p.add_argument("results", metavar="RESULTS_FOLDER",
                   help="nnU-Net trainer folder, e.g. nnUNet_results/Dataset001_X/nnUNetTrainer__nnUNetPlans__3d_fullres")
    p.add_argument("-o", "--out", required=True, metavar="MODEL_FOLDER", help="model folder to write (new or empty)")
    p.add_argument("-f", "--folds", nargs="+", metavar="FOLD",
                   help="folds to import (0 1 ... or all; default: every fold with the checkpoint)")
    p.add_argument("--checkpoint", choices=["final", "best"], default="final",
                   help="checkpoint_final.pth or checkpoint_best.pth of each fold (default final); it is written "
                   "as fold_K/checkpoint_final.pt")
    p.add_argument("-c", "--configuration",
                   help="nnU-Net configuration (default: the folder name's, e.g. 3d_fullres)")
    p.add_argument("--shift-reference", nargs="+", metavar="IMAGES",
                   help="folders (or files) of images the model was trained on, e.g. nnUNet_raw/DatasetXXX/imagesTr: "
                        "up to 32 of them are measured (spacing, shape, intensities, noise, orientation) and each "
                        "fold's network runs over random tiles of them, and predict's input-shift check then compares "
                        "new cases with those statistics and features (docs/shift.md). Without it, an imported "
                        "model has no shift check")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where the networks run for --shift-reference (default: cuda if available)")
    return p


def run(args: argparse.Namespace) -> int:
    from volseg.importers.nnunet import map_nnunet_model, write_model_folder

    mapped = map_nnunet_model(args.results, args.folds, args.checkpoint, args.configuration)
    fitted = []
    finish = None
    if args.shift_reference:  # the images are known to be there before anything is written
        from volseg.inference.cases import find_input_cases
        from volseg.inference.predictor import resolve_device
        from volseg.shift.reference import fit_reference_from_images

        find_input_cases(args.shift_reference, len(mapped.plans["dataset"]["channel_names"]))
        device = resolve_device(args.device)

        def finish(folder):  # inside the model folder being assembled: a failure leaves none
            fitted.append(fit_reference_from_images(folder, args.shift_reference, device))

    write_model_folder(mapped, args.out, finish)
    rec, cfg = mapped.record, mapped.plans["configurations"][mapped.config_name]
    print(f"imported {rec['trainer']} / {rec['plans_name']} / {mapped.config_name}, folds "
          f"{', '.join(mapped.states)} ({rec['checkpoint']}) → {args.out}")
    print(f"  network {cfg['network']['architecture']}, patch {cfg['patch_size']}, spacing {cfg['spacing']} mm, "
          f"mirroring axes {cfg['inference']['mirror_axes']}")
    for note in rec["notes"]:
        print(f"  note: {note}")
    for ref in fitted:
        print(f"  shift check: fingerprint statistics of {ref.cases} case(s) and the feature reference of "
              f"{len(ref.features)} fold(s) from {', '.join(args.shift_reference)} "
              "(volseg calibrate-shift adds its p-values)")
    return 0
