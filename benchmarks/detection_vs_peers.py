"""Lung nodule detection: volseg's Retina U-Net against two peers, same data, same CPU budget.

One lung demo dataset (``--cases`` training cases, ``--test`` annotated test cases, ``--seed``)
is generated once into ``--out``, planned once by volseg (configuration ``3d_cpu``, the
test-time mirroring edited to x only, as ``scripts/run_demo.py`` does), and three detectors are
trained for the same number of iterations at the plan's patch and batch size:

``retina``  volseg's Retina U-Net (the plan's task "detection"), trained on fold 0 exactly as
            ``run_demo.py``'s lung job does (held-out validation and detection sweep included),
            predicting the test cases into ``candidates.csv``.
``seg``     volseg's U-Net as a detector: a second dataset folder holds the same files with
            ``"task": "segmentation"``, so volseg plans it as segmentation and turns the instance
            maps into the class "nodule"; its plan takes the detection plan's patch and U-Net
            topology (batch and spacing equal; asserted).
            Trained on fold 0 the same way, predicted with ``save_probabilities`` and without
            post-processing; each 26-connected component of the predicted nodule label is one
            candidate, scored by its maximum nodule probability, placed at its centre of mass.
``monai``   MONAI's ``RetinaNetDetector`` with a small ResNet-FPN (see
            ``benchmarks/peers/monai_retinanet.py``), trained on the same fold-0 cases read from
            volseg's preprocessed arrays with volseg's own patch sampler, anchors sized from the
            plan's, predicted with MONAI's sliding window on the test images preprocessed by volseg
            (no test-time mirroring: MONAI's detector has none; volseg's two mirror along x).

Each ``candidates.csv`` is scored by ``evaluate_detection_csv`` against ``annotationsTs.csv``
(scans ``scansTs.txt``): CPM with its 95% bootstrap CI and the sensitivity at 1/8, 1 and
8 FP/scan. Times: training (the training loop; for volseg also the whole ``volseg.train``
call), and inference over the test cases (reading, preprocessing, sliding window, export).
The table gives each number and its ratio against the Retina U-Net; everything goes to
``OUT/results.json``.

``--curve 2,4`` then trains the Retina U-Net again from scratch at 2× and 4× the iterations
(each run its own schedule, as a user with that budget would train it) and prints the
learning curve: CPM, its CI and the sensitivities per budget, with the detection sweep's
choice and the times.

Usage:
    python benchmarks/detection_vs_peers.py [--out DIR] [--cases 20] [--test 8] [--seed 0]
        [--iterations 400] [--shape Z,Y,X] [--only retina,seg,monai] [--curve 2,4] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import cpu_name, print_versions  # noqa: E402

CONFIG = "3d_cpu"
METHODS = {"retina": "volseg Retina U-Net", "seg": "volseg U-Net + CC", "monai": "MONAI RetinaNet"}
RATES = ("0.125", "1", "8")
EQUAL_KEYS = ("patch_size", "batch_size", "spacing")
NETWORK_KEYS = ("features_per_stage", "kernel_sizes", "strides", "n_conv_per_stage")


def versions() -> dict:
    import torch

    try:
        import monai

        monai_version = monai.__version__
    except ImportError:
        monai_version = None
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__, "monai": monai_version,
            "python": platform.python_version()}


def budget(iterations: int) -> tuple[int, int]:
    """(epochs, iterations per epoch) for volseg: epochs of 20 iterations as in the demo, or of the
    largest divisor of ``iterations`` up to 20, so the total is exact."""
    per_epoch = max(d for d in range(1, min(20, iterations) + 1) if iterations % d == 0)
    return iterations // per_epoch, per_epoch


def make_data(args, out: Path) -> Path:
    """The lung demo dataset in ``OUT/data``, generated once per settings."""
    from volseg.demo import generate_lung_dataset

    data = out / "data"
    settings = {"cases": args.cases, "test": args.test, "seed": args.seed, "shape": list(args.shape or [])}
    stamp = out / "data_settings.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == settings and (data / "dataset.json").is_file():
        print(f"reusing {data}", flush=True)
        return data
    for stale in (data, out / "data_seg", out / "plan_retina", out / "plan_seg"):
        shutil.rmtree(stale, ignore_errors=True)
    generate_lung_dataset(data, num_cases=args.cases, num_test=args.test, seed=args.seed, shape=args.shape)
    stamp.write_text(json.dumps(settings))
    return data


def segmentation_dataset(data: Path, dest: Path) -> Path:
    """``data`` as a segmentation dataset: the same files (symlinked), ``"task": "segmentation"``."""
    dest.mkdir(parents=True, exist_ok=True)
    meta = json.loads((data / "dataset.json").read_text())
    (dest / "dataset.json").write_text(json.dumps({**meta, "task": "segmentation"}, indent=2))
    for name in ("imagesTr", "labelsTr"):
        link = dest / name
        if not link.exists():
            link.symlink_to((data / name).resolve(), target_is_directory=True)
    return dest


def plan(dataset: Path, plan_dir: Path) -> dict:
    """volseg's plan and preprocessing, test-time mirroring edited to x only (``run_demo.py``'s edit)."""
    import volseg
    from volseg.planning.plans import save_plans

    plans = volseg.plan(dataset, plan_dir, device="cpu", progress=False)
    plans["configurations"][CONFIG]["inference"]["mirror_axes"] = [2]
    save_plans(plans, plan_dir / "plans.json")
    return plans


def train_volseg(plan_dir: Path, args) -> tuple[Path, dict]:
    """``volseg.train`` fold 0 at the budget; (fold folder, times: loop and whole call)."""
    import volseg

    epochs, per_epoch = budget(args.iterations)
    shutil.rmtree(plan_dir / "models" / CONFIG, ignore_errors=True)  # a fresh model on every run
    t0 = time.perf_counter()
    fold_dir = volseg.train(plan_dir, fold=0, epochs=epochs, iterations=per_epoch, device=args.device,
                            progress=False)
    total = time.perf_counter() - t0
    log = [json.loads(line) for line in (fold_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    return fold_dir, {"train_s": sum(r["train_seconds"] for r in log), "train_call_s": total,
                      "last_loss": log[-1]["train_loss"]}


def run_retina(data: Path, out: Path, args) -> dict:
    import volseg

    fold_dir, rec = train_volseg(out / "plan_retina", args)
    pred = out / "predictions_retina"
    shutil.rmtree(pred, ignore_errors=True)
    t0 = time.perf_counter()
    volseg.predict([data / "imagesTs"], pred, fold_dir.parent, device=args.device, progress=False)
    sweep = json.loads((fold_dir.parent / "detection_sweep.json").read_text())
    return {**rec, "predict_s": time.perf_counter() - t0, **case_seconds(pred), "candidates": pred / "candidates.csv",
            "sweep": {k: sweep.get(k) for k in ("nms_iou", "wbc_iou", "score_threshold", "min_size_mm", "cpm")}}


def case_seconds(pred: Path) -> dict:
    """Sums over the predicted cases of ``summary.json``'s per-case seconds: ``network`` (the forward
    passes together with the aggregator's work per tile and member), of it ``boxes`` (scoring,
    decoding, NMS and the WBC per tile), and ``clustering`` (the WBC over tiles)."""
    cases = json.loads((pred / "summary.json").read_text())["cases"].values()
    return {f"{key}_s": sum(float((c.get("seconds") or {}).get(key, 0.0)) for c in cases)
            for key in ("network", "boxes", "clustering")}


def curve_table(points: list[dict]) -> str:
    """One row per training budget of the Retina U-Net."""
    lines = [f"{'iterations':>10}{'CPM':>8}{'95% CI':>14}" + "".join(f"{'sens@' + r:>10}" for r in RATES)
             + f"{'held-out CPM':>14}{'NMS/WBC IoU':>13}{'train (s)':>11}{'inference (s)':>15}"]
    for p in points:
        lo, hi = p["cpm_ci"]
        sw = p["sweep"]
        lines.append(f"{p['iterations']:>10}{fmt(p['cpm']):>8}{fmt(lo) + '–' + fmt(hi):>14}"
                     + "".join(f"{fmt(p['sens@' + r]):>10}" for r in RATES)
                     + f"{fmt(sw['cpm']):>14}{str(sw['nms_iou']) + '/' + str(sw['wbc_iou']):>13}"
                     + f"{p['train_s']:>11.1f}{p['predict_s']:>15.1f}")
    return "\n".join(lines)


def component_candidates(pred: Path, case_ids: list[str], ending: str) -> Path:
    """``candidates.csv`` from the predicted label maps: one row per 26-connected nodule component,
    its maximum nodule probability and its centre of mass (world mm)."""
    import cc3d
    from scipy import ndimage

    from volseg.io.nifti import read_image
    from volseg.io.world import voxel_to_world

    rows = ["seriesuid,coordX,coordY,coordZ,probability"]
    for case in case_ids:
        labels, geometry = read_image(pred / f"{case}{ending}")
        prob = np.load(pred / "maps" / f"{case}_probabilities.npz")["probabilities"][1].astype(np.float32)
        comps, n = cc3d.connected_components(labels == 1, connectivity=26, return_N=True)
        if n == 0:
            continue
        index = np.arange(1, n + 1)
        scores = ndimage.maximum(prob, comps, index)
        centres = voxel_to_world(np.asarray(ndimage.center_of_mass(labels == 1, comps, index)), geometry)
        for (x, y, z), s in sorted(zip(centres, scores), key=lambda r: -r[1]):
            rows.append(f"{case},{float(x)!r},{float(y)!r},{float(z)!r},{float(s)!r}")
    path = pred / "candidates.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def plan_seg(data: Path, out: Path, det_config: dict) -> dict:
    """The same data planned as segmentation, trained at the detection plan's patch and U-Net.

    The detection planner sizes its patch with the heads' cost, so it may choose a smaller patch
    (and with it other strides) than the segmentation planner; the segmentation plan takes the
    detection plan's patch and backbone topology, so the two differ only in their heads. Batch
    and spacing must already be equal."""
    from volseg.planning.plans import save_plans

    plans = plan(segmentation_dataset(data, out / "data_seg"), out / "plan_seg")
    cfg = plans["configurations"][CONFIG]
    cfg["patch_size"] = list(det_config["patch_size"])
    cfg["network"].update({k: det_config["network"][k] for k in NETWORK_KEYS + ("n_conv_per_stage_decoder",)})
    save_plans(plans, out / "plan_seg" / "plans.json")
    differ = [k for k in EQUAL_KEYS if cfg[k] != det_config[k]]
    differ += [f"network.{k}" for k in NETWORK_KEYS if cfg["network"][k] != det_config["network"][k]]
    if plans["task"] != "segmentation" or differ:
        raise SystemExit(f"segmentation plan: task {plans['task']!r}, differs from the detection plan in {differ}")
    return plans


def run_seg(data: Path, out: Path, args, plans: dict) -> dict:
    import volseg

    cfg = plans["configurations"][CONFIG]
    fold_dir, rec = train_volseg(out / "plan_seg", args)
    pred = out / "predictions_seg"
    shutil.rmtree(pred, ignore_errors=True)
    t0 = time.perf_counter()
    volseg.predict([data / "imagesTs"], pred, fold_dir.parent, device=args.device, progress=False,
                   save_probabilities=True, postprocess=False)
    cases = (data / "scansTs.txt").read_text().split()
    csv = component_candidates(pred, cases, plans["dataset"].get("file_ending", ".nii.gz"))
    return {**rec, "predict_s": time.perf_counter() - t0, **case_seconds(pred), "candidates": csv,
            "network": cfg["network"]["architecture"]}


def run_monai(data: Path, out: Path, args, plans: dict) -> dict:
    import torch

    from peers import monai_retinanet as peer
    from volseg.training.splits import load_or_create_splits

    cfg = plans["configurations"][CONFIG]
    pre = out / "plan_retina" / "preprocessed" / CONFIG
    ids = sorted(p.stem for p in pre.glob("*.json"))
    splits_file = out / "plan_retina" / "models" / CONFIG / "splits.json"
    splits = load_or_create_splits(splits_file if splits_file.is_file() else out / "monai_splits.json", ids)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    names = [k for k, v in sorted(plans["dataset"]["labels"].items(), key=lambda kv: kv[1]) if v > 0]
    detector = peer.build_detector(cfg, len(plans["dataset"]["channel_names"]), len(names), device)
    params = sum(p.numel() for p in detector.network.parameters())
    rec = peer.train(detector, pre, splits[0]["train"], cfg, args.iterations, device, seed=args.seed)
    torch.save(detector.network.state_dict(), out / "monai_retinanet.pt")
    pred = out / "predictions_monai"
    shutil.rmtree(pred, ignore_errors=True)
    t0 = time.perf_counter()
    csv = peer.predict(detector, data / "imagesTs", pred, plans, cfg, names, device)
    return {"train_s": rec["seconds"], "predict_s": time.perf_counter() - t0, "candidates": csv,
            "first_loss": rec["first_loss"], "last_loss": rec["last_loss"], "parameters": params,
            "augmentation": peer.AUGMENTATION}


def score(rec: dict, data: Path, out: Path, method: str) -> dict:
    """FROC of a method's ``candidates.csv`` on the test scans; the numbers of the table."""
    from volseg.evaluation.detection import evaluate_detection_csv

    s = evaluate_detection_csv(rec["candidates"], data / "annotationsTs.csv", out / f"evaluation_{method}",
                               scans=data / "scansTs.txt")
    return {"cpm": s["cpm"], "cpm_ci": s["cpm_ci"], **{f"sens@{r}": s["sensitivity"][r] for r in RATES},
            "num_candidates": sum(1 for _ in open(rec["candidates"])) - 1, "counts": s["counts"]}


def fmt(v, spec: str = ".3f") -> str:
    return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, spec)


def table(results: dict) -> str:
    """Rows of numbers, one column per method, then each method's ratio against the Retina U-Net."""
    methods = list(results)
    ref = results.get("retina")
    others = [m for m in methods if m != "retina"] if ref else []
    rows = [("CPM", "cpm", ".3f"), ("CPM 95% CI", "cpm_ci", None),
            *[(f"sens @ {r} FP/scan", f"sens@{r}", ".3f") for r in RATES],
            ("candidates", "num_candidates", "d"), ("train loop (s)", "train_s", ".1f"),
            ("train call (s)", "train_call_s", ".1f"), ("inference (s)", "predict_s", ".1f"),
            ("  forward + adds (s)", "network_s", ".1f"), ("  of it box work (s)", "boxes_s", ".1f"),
            ("  WBC of tiles (s)", "clustering_s", ".1f")]
    w = 22
    head = f"{'':<20}" + "".join(f"{METHODS[m]:>{w}}" for m in methods)
    head += "".join(f"{m + ' / retina':>{w}}" for m in others)
    lines = [head]
    for name, key, spec in rows:
        line = f"{name:<20}"
        for m in methods:
            v = results[m].get(key)
            cell = f"{fmt(v[0])}–{fmt(v[1])}" if key == "cpm_ci" and v else fmt(v, spec or ".3f")
            line += f"{cell:>{w}}"
        for m in others:
            a, b = results[m].get(key), ref.get(key)
            ok = spec and isinstance(a, (int, float)) and isinstance(b, (int, float)) and b and not np.isnan(b)
            line += f"{(fmt(a / b, '.2f') + '×') if ok else '':>{w}}"
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="output folder (default: a temporary one)")
    ap.add_argument("--cases", type=int, default=20, help="training cases of the lung demo (default 20)")
    ap.add_argument("--test", type=int, default=8, help="annotated test cases (default 8)")
    ap.add_argument("--seed", type=int, default=0, help="dataset and training seed (default 0)")
    ap.add_argument("--iterations", type=int, default=400, help="training iterations of every method (default 400)")
    ap.add_argument("--shape", type=lambda s: tuple(int(v) for v in s.split(",")),
                    help="force the demo volumes' shape Z,Y,X (default: 64–96 × 128 × 128)")
    ap.add_argument("--only", type=lambda s: [m.strip() for m in s.split(",") if m.strip()],
                    default=list(METHODS), help=f"methods to run, comma-separated (default {','.join(METHODS)})")
    ap.add_argument("--curve", type=lambda s: [int(v) for v in s.split(",") if v.strip()], default=[],
                    help="also train the Retina U-Net at these multiples of --iterations, e.g. 2,4: its learning curve")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda, for every method")
    args = ap.parse_args()
    unknown = [m for m in args.only if m not in METHODS]
    if unknown or args.iterations < 1 or (args.shape and len(args.shape) != 3):
        ap.error(f"--only takes {', '.join(METHODS)} (got {unknown}); --iterations ≥ 1; --shape Z,Y,X")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    out = args.out or Path(tempfile.mkdtemp(prefix="volseg_detection_bench_"))
    out.mkdir(parents=True, exist_ok=True)
    env = versions()
    print(f"machine: {env['cpu']}, {env['cores']} cores, device {args.device}; torch {env['torch']}, "
          f"MONAI {env['monai'] or 'not installed'}", flush=True)
    torch_versions = print_versions(None)  # MONAI runs in this environment: no peer torch
    t_start = time.perf_counter()
    data = make_data(args, out)
    # both plans before any training: volseg preprocesses in forked processes, which can hang once
    # torch has started its threads in this process
    plans = plan(data, out / "plan_retina")
    cfg = plans["configurations"][CONFIG]
    seg_plans = plan_seg(data, out, cfg) if "seg" in args.only else None
    epochs, per_epoch = budget(args.iterations)
    print(f"lung demo: {args.cases} training + {args.test} test cases, seed {args.seed}; {CONFIG}: patch "
          f"{cfg['patch_size']}, batch {cfg['batch_size']}, spacing {cfg['spacing']}; {args.iterations} iterations "
          f"(volseg: {epochs} × {per_epoch}); test-time mirroring {cfg['inference']['mirror_axes']} (volseg)",
          flush=True)
    if "monai" in args.only and env["monai"] is None:
        print("MONAI is not installed in this environment: method 'monai' is skipped")
        args.only.remove("monai")
    results = {}
    for m in METHODS:
        if m not in args.only:
            continue
        print(f"\n== {METHODS[m]} ==", flush=True)
        rec = (run_retina(data, out, args) if m == "retina" else run_seg(data, out, args, seg_plans) if m == "seg"
               else run_monai(data, out, args, plans))
        results[m] = {**{k: v for k, v in rec.items() if k != "candidates"}, "candidates": str(rec["candidates"]),
                      **score(rec, data, out, m)}
        print(f"   CPM {results[m]['cpm']:.3f}, train {rec['train_s']:.1f} s, inference {rec['predict_s']:.1f} s",
              flush=True)
    print("\n" + table(results))
    curve = [{"iterations": args.iterations, **results["retina"]}] if "retina" in results else []
    for m in args.curve:
        budget_args = argparse.Namespace(**{**vars(args), "iterations": m * args.iterations})
        print(f"\n== {METHODS['retina']}, {budget_args.iterations} iterations ==", flush=True)
        rec = run_retina(data, out, budget_args)
        point = {"iterations": budget_args.iterations, **{k: v for k, v in rec.items() if k != "candidates"},
                 **score(rec, data, out, f"retina_{budget_args.iterations}")}
        curve.append(point)
        print(f"   CPM {point['cpm']:.3f}, train {rec['train_s']:.1f} s, inference {rec['predict_s']:.1f} s",
              flush=True)
    if len(curve) > 1:
        print("\nlearning curve of the Retina U-Net (test cases; each budget trained from scratch)\n"
              + curve_table(curve))
    wall = time.perf_counter() - t_start
    report = {"machine": env, "versions": torch_versions,
              "settings": {**vars(args), "out": str(out), "epochs": epochs, "iterations_per_epoch": per_epoch,
                           "patch_size": cfg["patch_size"], "batch_size": cfg["batch_size"], "spacing": cfg["spacing"]},
              "results": results, "curve": curve, "wall_seconds": wall}
    (out / "results.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwall time {wall:.0f} s; results: {out / 'results.json'}")


if __name__ == "__main__":
    main()
