"""CPU prediction of one model on one real case: volseg's forward-pass runtimes against MONAI and nnU-Net v2.

The model is an nnU-Net v2 trainer folder holding a ``PlainConvUNet`` of a CPU plan's size
(16→256 features, 5 stages, 2 convolutions per stage, patch 64³, 3 classes, 2 mm spacing,
random weights), written without nnU-Net by the import tests' fixture
(``tests/importers/nnunet_fixture.py``) and imported with ``volseg import-nnunet``. So every
method runs the same weights: volseg (torch, OpenVINO, ONNX Runtime, OpenVINO bf16), MONAI's
``sliding_window_inference`` with volseg's torch network, and ``nnUNetPredictor`` in nnU-Net's
own environment on the trainer folder itself. The case is the MNI152 T1 template at 2 mm that
the ``nilearn`` wheel ships (91×109×91, read offline), so no resampling is needed.

Each method runs in its own process; volseg's and MONAI's processes import both libraries.
Methods take turns for ``--rounds`` rounds, and the fastest run of each counts. Reported:

* **whole case** (NIfTI in, NIfTI out): volseg's per-case seconds (reading, preprocessing,
  sliding window, restoring, writing; the model loaded and the runtime chosen beforehand)
  against ``nnUNetPredictor.predict_from_files_sequential`` on the same file (the same steps);
* **sliding window** on the preprocessed array: volseg's ``predict_sliding_window`` with each
  runtime against MONAI (labels only, Gaussian σ = patch/8, overlap 0.5, the same tile batch:
  ``--tile-batch``, by default what ``volseg predict`` takes on the CPU);
* each method's share of voxels with volseg-torch's labels, and its peak resident set;
* first, the arithmetic: the network's GFLOP per forward pass (torch's flop counter), the
  rate at which each f32 runtime does them, and this CPU's f32 sgemm rate (torch and
  OpenVINO, 2048³) beside it, so that a ratio the CPU cannot reach at f32 shows as such.

Usage:
    python benchmarks/inference/bench_runtime.py [--rounds 2] [--nnunet-python ../peers/nnunet/bin/python]
        [--work DIR] [--tile-batch N] [--arithmetic-only]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
REPO = HERE.parents[2]
sys.path.insert(0, str(HERE.parents[1]))  # benchmarks/
from common import DEFAULT_PEER, best_of, cpu_flags, cpu_name, monai_labels, peak_rss_mb, print_versions  # noqa: E402

RUNTIMES = {"volseg-torch": ("torch", "f32"), "volseg-openvino": ("openvino", "f32"),
            "volseg-onnxruntime": ("onnxruntime", "f32"), "volseg-openvino-bf16": ("openvino", "bf16")}
CASE = "mni"


def prepare(work: Path) -> tuple[Path, Path, Path]:
    """The nnU-Net trainer folder, the volseg model folder imported from it, and the image folder."""
    sys.path.insert(0, str(REPO / "tests" / "importers"))
    from nnunet_fixture import FolderSpec, write_results_folder

    from volseg.importers import import_nnunet

    images = work / "images"
    model = work / "model"
    trainer = work / "results" / "Dataset042_Tiny" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    if not model.is_dir():
        spec = FolderSpec(features=[16, 32, 64, 128, 256], kernel_sizes_t=[[3, 3, 3]] * 5,
                          strides_t=[[1, 1, 1]] + [[2, 2, 2]] * 4, blocks=[2] * 5, decoder=[2] * 4,
                          patch_t=[64, 64, 64], spacing_t=[2.0, 2.0, 2.0], schemes=["ZScoreNormalization"],
                          use_mask=[False], channels={"0": "T1"}, labels={"background": 0, "grey": 1, "white": 2},
                          mirror_axes_t=(0, 1, 2))
        trainer, _ = write_results_folder(work / "results", spec)
        plans = json.loads((trainer / "plans.json").read_text())  # what nnUNetPredictor also reads
        config = plans["configurations"]["3d_fullres"]
        linear = {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None}
        config.update(resampling_fn_seg="resample_data_or_seg_to_shape",
                      resampling_fn_seg_kwargs={**linear, "is_seg": True},
                      resampling_fn_probabilities="resample_data_or_seg_to_shape",
                      resampling_fn_probabilities_kwargs=linear)
        (trainer / "plans.json").write_text(json.dumps(plans, indent=2))
        import_nnunet(trainer, model)
    if not (images / f"{CASE}_0000.nii.gz").is_file():
        from nilearn.datasets import load_mni152_template

        images.mkdir(parents=True, exist_ok=True)
        load_mni152_template(resolution=2).to_filename(str(images / f"{CASE}_0000.nii.gz"))
    return trainer, model, images


def _labels(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def run_whole_case(method: str, model_dir: Path, images: Path, out: Path, tta: bool, tiles: int | None) -> dict:
    """One volseg runtime on the whole case, in this (child) process."""
    import monai.inferers  # noqa: F401  (equal imports)

    from volseg.inference.predictor import PredictOptions, predict_folder
    from volseg.model import load_model

    runtime, precision = RUNTIMES[method]
    t0 = time.perf_counter()
    model = load_model(model_dir)
    options = PredictOptions(tta=tta, runtime=runtime, precision=precision, shift_check=False, device="cpu",
                             tile_batch=tiles)
    summary = predict_folder([images], out, model, options, progress=False)  # the first: export and check
    first = time.perf_counter() - t0
    summary = predict_folder([images], out, model, options, progress=False)
    case = summary["cases"][CASE]["seconds"]
    return {"total": case["total"], "network": case["network"], "first_run": first, "peak_mb": peak_rss_mb(),
            "runtime": summary["runtime"]["runtime"], "precision": summary["runtime"]["precision"]}


def run_window(method: str, model_dir: Path, images: Path, tta: bool, out: Path, tiles: int | None) -> dict:
    """The sliding window alone on the preprocessed case: a volseg runtime, or MONAI with volseg's torch network."""
    from monai.inferers import sliding_window_inference

    import torch

    from volseg.inference.cases import find_input_cases, read_input_case
    from volseg.inference.predictor import PredictOptions, prepare as preprocess, tile_batch, with_runtime
    from volseg.inference.sliding_window import predict_sliding_window
    from volseg.model import load_model

    model = load_model(model_dir)
    images_, geometry = read_input_case(find_input_cases([images], model.num_channels)[0], model.num_channels)
    data = torch.from_numpy(preprocess(model, images_, geometry)[0])
    cfg = model.config
    patch, batch = cfg["patch_size"], tile_batch(cfg, PredictOptions(tile_batch=tiles), torch.device("cpu"))
    mirror = cfg["inference"]["mirror_axes"] if tta else ()
    k = model.plans["outputs"]["num_outputs"]
    if method == "monai":
        net = model.networks[0]

        def predict() -> torch.Tensor:
            x, logits = data[None], None
            for axes in [()] + ([a for r in range(1, len(mirror) + 1) for a in _combinations(mirror, r)] if tta else []):
                dims = [a + 2 for a in axes]
                xi = torch.flip(x, dims) if dims else x
                o = sliding_window_inference(xi, patch, batch, net, overlap=0.5, mode="gaussian", sigma_scale=0.125)
                o = torch.flip(o, dims) if dims else o
                logits = o if logits is None else logits + o
            return monai_labels(logits[0])  # as volseg's finalize takes them
    else:
        runtime, precision = RUNTIMES[method]
        model, _ = with_runtime(model, PredictOptions(runtime=runtime, precision=precision, tile_batch=batch),
                                torch.device("cpu"))

        def predict() -> torch.Tensor:
            return predict_sliding_window(model.networks, data, patch, k, mirror_axes=mirror, tile_batch=batch).labels

    with torch.inference_mode():
        predict()  # warm-up (first-call allocations, runtime compilation)
        t0 = time.perf_counter()
        labels = predict()
        seconds = time.perf_counter() - t0
    np.save(out, labels.numpy())
    return {"total": seconds, "peak_mb": peak_rss_mb()}


def run_arithmetic(model_dir: Path, tiles: int | None) -> dict:
    """The network's floating-point work on one tile batch, and the rate at which each f32
    runtime does it, beside this CPU's f32 matrix-multiply rate (torch's and, when installed,
    OpenVINO's 2048³ sgemm): how far the forward pass is from what the CPU does on dense
    float32 work. A runtime that is missing or fails volseg's check is left out."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from volseg.inference.predictor import PredictOptions, tile_batch, with_runtime
    from volseg.model import load_model

    def best(fn, n: int = 5) -> float:  # after one warm-up call
        fn()
        return best_of(n, fn)[1]

    model = load_model(model_dir)
    cfg = model.config
    x = torch.randn(tile_batch(cfg, PredictOptions(tile_batch=tiles), torch.device("cpu")), model.num_channels,
                    *cfg["patch_size"])
    rec: dict = {"tile_batch": x.shape[0]}
    for m, (runtime, precision) in RUNTIMES.items():
        if precision != "f32":
            continue
        chosen, choice = with_runtime(model, PredictOptions(runtime=runtime, precision=precision,
                                                            tile_batch=x.shape[0]), torch.device("cpu"))
        if choice.runtime != runtime:
            continue  # missing here, or it disagreed with torch: torch would run in its place
        with torch.inference_mode():
            if m == "volseg-torch":
                with FlopCounterMode(display=False) as counter:
                    chosen.networks[0](x)
                rec["gflop"] = counter.get_total_flops() / 1e9
            rec[m] = best(lambda: chosen.networks[0](x))
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    rec["sgemm_torch"] = 2 * n ** 3 / best(lambda: a @ b, 20) / 1e9
    try:
        import openvino as ov
    except ImportError:
        return rec

    class MatMul(torch.nn.Module):
        def forward(self, u: torch.Tensor) -> torch.Tensor:
            return u @ b

    compiled = ov.Core().compile_model(ov.convert_model(MatMul(), example_input=a), "CPU", {
        "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        "PERFORMANCE_HINT": "LATENCY"})
    request, an = compiled.create_infer_request(), a.numpy()
    rec["sgemm_openvino"] = 2 * n ** 3 / best(lambda: request.infer([an]), 20) / 1e9
    return rec


def print_arithmetic(rec: dict) -> None:
    """Each f32 runtime's rate on one tile batch against the CPU's sgemm rate, and the rate
    that half of torch's time (MONAI's network) would take."""
    peak = max(rec["sgemm_torch"], rec.get("sgemm_openvino", 0.0))
    print(f"\n== arithmetic: one forward pass of {rec['tile_batch']} tile(s), {rec['gflop']:.1f} GFLOP ==")
    print(f"{'method':<24}{'seconds':>9}{'GFLOP/s':>9}{'of sgemm':>10}")
    for m in (k for k in RUNTIMES if k in rec):
        print(f"{m:<24}{rec[m]:>9.4f}{rec['gflop'] / rec[m]:>9.0f}{rec['gflop'] / rec[m] / peak:>9.0%}")
    ov_rate = f"{rec['sgemm_openvino']:.0f} GFLOP/s" if "sgemm_openvino" in rec else "not installed"
    print(f"sgemm 2048³ f32: torch {rec['sgemm_torch']:.0f} GFLOP/s, OpenVINO {ov_rate}")
    need = 2 * rec["gflop"] / rec["volseg-torch"]
    print(f"0.5× torch's time per pass (what MONAI runs) takes {need:.0f} GFLOP/s, {need / peak:.0%} of this CPU's "
          "sgemm rate")


def _combinations(axes, r):
    import itertools

    return list(itertools.combinations(sorted(axes), r))


def child(argv: list[str]) -> dict:
    proc = subprocess.run([sys.executable, str(HERE), *argv], capture_output=True, text=True, env={**os.environ})
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a == b).mean()) if a.shape == b.shape else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2, help="processes per method, taking turns (default 2)")
    ap.add_argument("--nnunet-python", type=Path, default=DEFAULT_PEER)
    ap.add_argument("--work", type=Path, help="working folder (default: a temporary one)")
    ap.add_argument("--tile-batch", type=int, help="tiles per forward pass of volseg and MONAI (default: what volseg "
                    "predict takes on the CPU, the imported plan's tile_batch_cpu; nnU-Net's predictor takes 1)")
    ap.add_argument("--arithmetic-only", action="store_true",
                    help="only the forward pass's GFLOP/s against this CPU's sgemm rate")
    ap.add_argument("--child", nargs=6, help=argparse.SUPPRESS)  # KIND METHOD TTA WORK OUT TILES
    args = ap.parse_args()
    if args.child:
        kind, method, tta, work, out, tiles = args.child
        work, tiles = Path(work), int(tiles) or None
        if kind == "arithmetic":
            rec = run_arithmetic(work / "model", tiles)
        elif kind == "case":
            rec = run_whole_case(method, work / "model", work / "images", Path(out), tta == "1", tiles)
        else:
            rec = run_window(method, work / "model", work / "images", tta == "1", Path(out), tiles)
        print(json.dumps(rec))
        return
    peer = args.nnunet_python if args.nnunet_python.is_file() else None
    print_versions(args.nnunet_python)
    work = args.work or Path(tempfile.mkdtemp(prefix="volseg-bench-runtime-"))
    trainer, model, images = prepare(work)
    import torch

    from volseg.inference.predictor import PredictOptions, tile_batch
    from volseg.planning.plans import load_plans

    plans = load_plans(model / "plans.json")
    config = plans["configurations"][plans["default_configuration"]]
    tiles = tile_batch(config, PredictOptions(tile_batch=args.tile_batch), torch.device("cpu"))
    print(f"machine: {cpu_name()} ({cpu_flags()}), {os.cpu_count()} cores, torch threads {torch.get_num_threads()}; "
          f"case: MNI152 T1 2 mm; network: PlainConvUNet 16→256, patch 64³, 3 classes; rounds {args.rounds}; "
          f"tile batch {tiles} for volseg and MONAI (nnU-Net's predictor: 1)")
    if peer is None:
        print(f"nnU-Net v2 not found at {args.nnunet_python}: its predictor is not measured "
              "(bash scripts/setup_peers.sh installs it, or pass --nnunet-python)")
    print_arithmetic(child(["--child", "arithmetic", "-", "0", str(work), "-", str(tiles)]))
    if args.arithmetic_only:
        return
    for tta in (False, True):
        t = "1" if tta else "0"
        case, window = {}, {}
        for _ in range(args.rounds):
            for m in RUNTIMES:
                rec = child(["--child", "case", m, t, str(work), str(work / f"case_{m}"), str(tiles)])
                if m not in case or rec["total"] < case[m]["total"]:
                    case[m] = rec
            if peer is not None:
                proc = subprocess.run([str(peer), str(HERE.parents[1] / "peers" / "nnunet_predict_folder.py"),
                                       str(trainer), str(images), str(work / "case_nnunet"), t, "1"],
                                      capture_output=True, text=True)
                if proc.returncode != 0:
                    raise SystemExit(proc.stderr[-3000:])
                rec = json.loads(proc.stdout.strip().splitlines()[-1])
                if "nnU-Net" not in case or rec["total"] < case["nnU-Net"]["total"]:
                    case["nnU-Net"] = rec
            for m in (*RUNTIMES, "monai"):
                rec = child(["--child", "window", m, t, str(work), str(work / f"window_{m}.npy"), str(tiles)])
                if m not in window or rec["total"] < window[m]["total"]:
                    window[m] = rec
        ref = _labels(work / "case_volseg-torch" / f"{CASE}.nii.gz")
        print(f"\n== TTA {'on (8 mirrorings)' if tta else 'off'}: whole case, NIfTI in and out ==")
        print(f"{'method':<24}{'runtime':>18}{'seconds':>9}{'labels = torch':>16}{'peak MB':>9}")
        for m, r in case.items():
            folder = "case_nnunet" if m == "nnU-Net" else f"case_{m}"
            agree = agreement(_labels(work / folder / f"{CASE}.nii.gz"), ref)
            what = "nnUNetPredictor" if m == "nnU-Net" else f"{r['runtime']} {r['precision']}"
            print(f"{m:<24}{what:>18}{r['total']:>9.2f}{100 * agree:>15.2f}%{r['peak_mb']:>9.0f}")
        ref_w = np.load(work / "window_volseg-torch.npy")
        print(f"\n== TTA {'on' if tta else 'off'}: sliding window on the preprocessed case ==")
        print(f"{'method':<24}{'seconds':>9}{'labels = torch':>16}{'peak MB':>9}")
        for m, r in window.items():
            agree = agreement(np.load(work / f"window_{m}.npy"), ref_w)
            print(f"{m:<24}{r['total']:>9.2f}{100 * agree:>15.2f}%{r['peak_mb']:>9.0f}")
        fastest = min((m for m in RUNTIMES if not m.endswith("bf16")), key=lambda m: case[m]["total"])
        line = f"fastest f32 volseg ({fastest}) against"
        if "nnU-Net" in case:
            line += f" nnU-Net: {case[fastest]['total'] / case['nnU-Net']['total']:.3f}× the time;"
        wf = min((m for m in RUNTIMES if not m.endswith("bf16")), key=lambda m: window[m]["total"])
        line += f" sliding window {wf} against MONAI: {window[wf]['total'] / window['monai']['total']:.3f}× the time"
        print("\n" + line, flush=True)
    print(f"\nwork folder: {work}")


if __name__ == "__main__":
    main()
