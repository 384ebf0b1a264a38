"""Sliding-window benchmarks and memory checks on a GPU (run by ``benchmarks/gpu/check.sh``).

Subcommands, each writing one JSON file:

* ``env``: Python, torch, CUDA, cuDNN, Triton and MONAI versions, the GPU (name, memory,
  driver) and the CPU.
* ``bench``: one random volume through volseg (Triton backend, in its automatic mode and
  forced to full mode; torch backend) and through MONAI's ``sliding_window_inference``, the
  same volseg U-Net weights for all (``benchmarks/inference/bench_sliding_window.py``'s
  network, timing and peak-memory code). Default on a GPU: 384×384×256 voxels, 100 classes,
  patch 128³, overlap 0.5, Gaussian σ = patch/8, tile batch 2 (the case of MONAI #6427 on
  GitHub: many classes in a large volume).
  Without a GPU: a reduced volume on the CPU, torch backend and MONAI only.
* ``demo``: the MS demo dataset is generated and planned; its ``3d_fullres`` plan's network
  (random weights), patch, tile batch and mirroring predict one preprocessed demo case
  through volseg and MONAI. Then a few training iterations of that plan (``volseg.training``,
  mixed precision on CUDA) give ``torch.cuda.max_memory_allocated``, set against the
  planner's analytic estimate (``volseg.planning.memory``).
* ``slab``: under a GPU memory cap (``torch.cuda.set_per_process_memory_fraction``), volumes
  of growing depth are predicted in full mode, in slab mode and in the automatic mode: where
  does full mode run out of memory, and does the automatic choice pick slab mode there?
* ``report``: merges the step records and the JSON files into ``results.json`` and a
  Markdown table ``results.md``.

Every measurement runs in a fresh process that imports both volseg's sliding window and
MONAI's inferer before anything is timed, so that both pay the same imports and their peak
memory is their own. Reported per method: total seconds of the fastest run, network seconds
(the forward passes alone), stitching seconds (total − network) and their share of the
network time, and peak memory (``torch.cuda.max_memory_allocated`` on a GPU, the peak
resident set on the CPU). MONAI's labels are the argmax of its logits (no softmax: its
cheapest way to labels).

Usage:
    python benchmarks/gpu/bench_gpu.py env --out ENV.json
    python benchmarks/gpu/bench_gpu.py bench --out BENCH.json [--device cuda] [--size 256 384 384]
        [--patch 128 128 128] [--classes 100] [--repeat 2] [--save-dir DIR]
    python benchmarks/gpu/bench_gpu.py demo --out DEMO.json --work DIR [--device cuda]
    python benchmarks/gpu/bench_gpu.py slab --out SLAB.json [--device cuda]
    python benchmarks/gpu/bench_gpu.py report --work WORK --out OUT
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import itertools
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

HERE = Path(__file__).resolve()
ROOT = HERE.parents[2]
sys.path.insert(0, str(HERE.parents[1] / "inference"))
import bench_sliding_window as sw  # noqa: E402  (build_network, Timed, best_of)

sys.path.insert(0, str(HERE.parents[1]))
from common import cpu_name, print_versions  # noqa: E402

GB = 1e9
GIB = 2 ** 30
CHILD_TIMEOUT_S = float(os.environ.get("CHECK_CHILD_TIMEOUT_S", "120"))  # one measuring process
MONAI_CASE = {"size": [256, 384, 384], "patch": [128, 128, 128], "classes": 100, "tile_batch": 2}
CPU_CASE = {"size": [64, 96, 96], "patch": [48, 48, 48], "classes": 8, "tile_batch": 2}
QUICK_CASE = {"size": [32, 40, 40], "patch": [32, 32, 32], "classes": 3, "tile_batch": 2}


# --- helpers ----------------------------------------------------------------------------------------------

def resolve_device(name: str) -> str:
    """"cuda" or "cpu" for ``name`` ("auto": CUDA when available)."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    return name


def triton_usable(device: str) -> bool:
    """Whether the Triton kernels can run compiled here (CUDA device, Triton importable, no interpreter)."""
    from volseg.kernels.finalize import triton_available

    return device == "cuda" and triton_available() and os.environ.get("TRITON_INTERPRET") != "1"


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def write_json(path: str | os.PathLike, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, default=str) + "\n")


def run_child(spec: dict, timeout: float = CHILD_TIMEOUT_S) -> dict:
    """Run one measurement (:func:`child_main`) in a fresh process; its JSON record, or ``{"error": ...}``."""
    cmd = [sys.executable, str(HERE), "child", json.dumps(spec)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in proc.stdout.strip().splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"exit status {proc.returncode} (see the log above)"}
    rec = json.loads(lines[-1])
    rec["process_seconds"] = time.perf_counter() - t0
    return rec


def mirror_sets(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every combination of the mirroring axes (0 = z), the empty one first: 2^len(axes) members."""
    axes = sorted(set(int(a) for a in axes))
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


class FirstOutput(torch.nn.Module):
    """The full-resolution logits of a network that may return a deep-supervision list."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out[0] if isinstance(out, (list, tuple)) else out


def monai_logits(sliding_window_inference: Callable, net: torch.nn.Module, image: torch.Tensor,
                 patch: Sequence[int], tile_batch: int, mirror_axes: Sequence[int],
                 device: torch.device) -> torch.Tensor:
    """MONAI's Gaussian sliding window (overlap 0.5, σ = patch/8), averaged over the mirrorings.

    Args:
        image: float32 (C, Z, Y, X) on the CPU.

    Returns:
        float32 (K, Z, Y, X) logits on ``device``.
    """
    x = image[None].to(device)
    sets = mirror_sets(mirror_axes)
    total = None
    for axes in sets:
        dims = [a + 2 for a in axes]
        xi = torch.flip(x, dims) if dims else x
        out = sliding_window_inference(xi, list(patch), tile_batch, net, overlap=0.5, mode="gaussian",
                                       sigma_scale=0.125, sw_device=device, device=device)
        out = torch.flip(out, dims) if dims else out
        total = out if total is None else total.add_(out)
    return total[0].div_(len(sets))


# --- one measurement, in its own process ------------------------------------------------------------------

def _bench_problem(spec: dict, device: torch.device) -> tuple:
    """The random-volume problem: (network, image (1, Z, Y, X), patch, K, mode, mirror axes, tile batch)."""
    net = sw.build_network(spec["classes"], spec["patch"]).to(device)
    torch.manual_seed(1)
    image = torch.randn(1, *spec["size"])
    return net, image, spec["patch"], spec["classes"], "softmax", [], spec["tile_batch"]


def _demo_problem(spec: dict, device: torch.device) -> tuple:
    """The demo plan's problem: its network (random weights) and one preprocessed (C, Z, Y, X) case."""
    import numpy as np

    from volseg.planning.plans import configuration, load_plans
    from volseg.tasks import make_task

    plans = load_plans(Path(spec["plan"]) / "plans.json")
    _, config = configuration(plans, spec["config"])
    task = make_task(plans)
    task.prepare(config)
    torch.manual_seed(0)
    net = task.build_network(config).to(device).eval()
    image = torch.from_numpy(np.ascontiguousarray(np.load(spec["case"]))).float()
    inf = config["inference"]
    mirror = inf["mirror_axes"] if spec.get("tta", True) else []
    return (net, image, config["patch_size"], plans["outputs"]["num_outputs"], plans["outputs"]["mode"], mirror,
            inf.get("tile_batch", 2))


def measure_sliding_window(spec: dict) -> dict:
    """Time one method on one problem (see the module docstring); the fastest of ``spec["repeat"]`` runs.

    ``spec["method"]``: "volseg-triton" (automatic mode), "volseg-triton-full" (full mode forced),
    "volseg-torch" or "monai". Returns :func:`bench_sliding_window.best_of`'s record (seconds,
    ``peak_mb`` in MiB) plus the slab mode chosen and, with ``spec["save"]``, the output saved
    there (uint8 labels, or fp16 probabilities in sigmoid mode).
    """
    from monai.inferers import sliding_window_inference
    from volseg.inference.sliding_window import predict_sliding_window

    device = torch.device(spec["device"])
    problem = _demo_problem if spec.get("plan") else _bench_problem
    net, image, patch, k, mode, mirror, tile_batch = problem(spec, device)
    net = FirstOutput(net).eval()
    method = spec["method"]
    kept: dict = {}

    def predict(timed: torch.nn.Module) -> torch.Tensor:
        if method == "monai":
            logits = monai_logits(sliding_window_inference, timed, image, patch, tile_batch, mirror, device)
            out = logits.argmax(0).to(torch.uint8).cpu() if mode == "softmax" else torch.sigmoid(logits).half().cpu()
            kept["slab_mode"] = None
        else:
            backend = "torch" if method == "volseg-torch" else "triton"
            res = predict_sliding_window(timed, image, patch, k, mirror_axes=mirror, tile_batch=tile_batch,
                                         device=device, backend=backend, mode=mode,
                                         return_probabilities=mode == "sigmoid",
                                         slab=False if method == "volseg-triton-full" else None)
            kept["slab_mode"] = bool(res.timings.get("slab_mode"))
            out = res.labels if mode == "softmax" else res.probabilities
        kept["out"] = out
        return out if mode == "softmax" else (out > 0.5)

    rec = sw.best_of(int(spec.get("repeat", 2)), device, net, predict)
    rec.update(method=method, slab_mode=kept["slab_mode"], classes=k, patch=list(patch), mode=mode,
               image_shape=list(image.shape), members=len(mirror_sets(mirror)), tile_batch=tile_batch,
               peak_kind="max_memory_allocated" if device.type == "cuda" else "peak RSS")
    if spec.get("save"):
        torch.save(kept["out"], spec["save"])
    return rec


def measure_training(spec: dict) -> dict:
    """A few training iterations of a plan's configuration through ``volseg.training.run.train``.

    Returns:
        seconds, the last logged training loss, ``max_memory_allocated`` and
        ``max_memory_reserved`` in GB (1e9 bytes; CUDA only) or the peak resident set (CPU),
        and the planner's estimate for the configuration (GB, with and without its fixed
        CUDA overhead).
    """
    from volseg.planning.memory import CUDA_OVERHEAD_GB
    from volseg.planning.plans import configuration, load_plans
    from volseg.training.run import train

    plan = Path(spec["plan"])
    plans = load_plans(plan / "plans.json")
    _, config = configuration(plans, spec["config"])
    t0 = time.perf_counter()
    trained = train(plan, Path(spec["model"]), fold=0, config_name=spec["config"], epochs=1,
                    iterations=int(spec["iterations"]), device=spec["device"], num_workers=int(spec["workers"]),
                    progress=False)
    seconds = time.perf_counter() - t0
    log = [json.loads(x) for x in (trained.fold_dir / "log.jsonl").read_text().splitlines() if x.strip()]
    rec = {"config": spec["config"], "patch": config["patch_size"], "batch": config["batch_size"],
           "features": config["network"]["features_per_stage"], "iterations": int(spec["iterations"]),
           "seconds": seconds, "train_loss": log[-1]["train_loss"] if log else None, "device": spec["device"],
           "amp": spec["device"] == "cuda",
           "estimate_gb": config.get("memory_estimate_gb"),
           "estimate_without_overhead_gb": (config["memory_estimate_gb"] - CUDA_OVERHEAD_GB
                                            if spec["device"] == "cuda" else config.get("memory_estimate_gb"))}
    if spec["device"] == "cuda":
        rec["max_memory_allocated_gb"] = torch.cuda.max_memory_allocated() / GB
        rec["max_memory_reserved_gb"] = torch.cuda.max_memory_reserved() / GB
    else:
        rec["peak_rss_gb"] = sw.peak_rss_mb() * 2 ** 20 / GB
    return rec


def _oom_errors() -> tuple[type, ...]:
    errors: list[type] = [torch.cuda.OutOfMemoryError]
    if hasattr(torch, "OutOfMemoryError"):
        errors.append(torch.OutOfMemoryError)
    return tuple(errors)


def measure_slab_boundary(spec: dict) -> dict:
    """Full, slab and automatic mode on volumes of growing depth under a GPU memory cap.

    ``spec["scenarios"]``: each ``{"cap_gib", "classes", "yx", "depths", "patch"}``; the network
    is a 1×1×1 convolution to K channels, so that the stitching buffers decide the memory.
    Each run records whether it finished or ran out of memory, its seconds, its
    ``max_memory_allocated`` (GB) and the mode the automatic choice took. Without CUDA
    (``spec["device"] == "cpu"``) the same runs take place with no cap: a dry run of the code.
    """
    from volseg.inference.dense import DEFAULT_MEMORY_BUDGET
    from volseg.inference.sliding_window import predict_sliding_window

    device = torch.device(spec["device"])
    cuda = device.type == "cuda"
    total = torch.cuda.get_device_properties(device).total_memory if cuda else None
    out = {"default_budget_bytes": DEFAULT_MEMORY_BUDGET, "total_memory_bytes": total, "dry_run": not cuda,
           "scenarios": []}
    for sc in spec["scenarios"]:
        k, yx, patch = int(sc["classes"]), int(sc["yx"]), [int(p) for p in sc["patch"]]
        cap = int(sc["cap_gib"] * GIB)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), device)
        torch.manual_seed(0)
        net = torch.nn.Conv3d(1, k, 1).to(device).eval()
        big = torch.randn(1, max(sc["depths"]), yx, yx)
        runs = []
        for z in sc["depths"]:
            acc_bytes = 4 * k * z * yx * yx
            for mode, slab in (("full", False), ("slab", True), ("auto", None)):
                rec = {"depth": z, "mode": mode, "accumulator_bytes": acc_bytes,
                       "auto_expects_slab": acc_bytes > DEFAULT_MEMORY_BUDGET}
                if cuda:
                    gc.collect()
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                t0 = time.perf_counter()
                try:
                    res = predict_sliding_window(net, big[:, :z], patch, k, tile_batch=2, device=device,
                                                 backend="auto", slab=slab)
                    if cuda:
                        torch.cuda.synchronize(device)
                    rec.update(ok=True, slab_mode=bool(res.timings.get("slab_mode")),
                               labels_sum=int(res.labels.sum()))
                    del res
                except _oom_errors() as e:
                    rec.update(ok=False, error=str(e).splitlines()[0][:160])
                rec["seconds"] = time.perf_counter() - t0
                if cuda:
                    rec["peak_gb"] = torch.cuda.max_memory_allocated(device) / GB
                runs.append(rec)
                print(f"[slab] cap {sc['cap_gib']} GiB, K {k}, {z}x{yx}x{yx}, {mode}: "
                      f"{'ok' if rec['ok'] else 'out of memory'} ({rec['seconds']:.2f} s)", file=sys.stderr)
        del big
        out["scenarios"].append({**sc, "cap_bytes": cap if cuda else None, "runs": runs})
    if cuda:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
    return out


def child_main(spec: dict) -> None:
    """Entry point of a measuring process: print one JSON record as the last line."""
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    from monai.inferers import sliding_window_inference  # noqa: F401  (equal imports in every process)
    from volseg.inference.sliding_window import predict_sliding_window  # noqa: F401

    kind = spec.get("kind", "sliding_window")
    fn = {"sliding_window": measure_sliding_window, "train": measure_training, "slab": measure_slab_boundary}[kind]
    rec = fn(spec)
    if spec["device"] == "cuda":
        rec["device_name"] = torch.cuda.get_device_name()
    print(json.dumps(rec, default=str), flush=True)


# --- subcommands ------------------------------------------------------------------------------------------

def env_info() -> dict:
    """Versions and hardware of this machine (the GPU's name, memory and driver when there is one)."""
    info: dict[str, Any] = {
        "python": platform.python_version(), "executable": sys.executable, "torch": torch.__version__,
        "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "triton": None, "monai": package_version("monai"), "numpy": package_version("numpy"),
        "volseg": package_version("volseg"), "cpu": cpu_name(), "cpu_count": os.cpu_count(),
        "triton_interpret": os.environ.get("TRITON_INTERPRET"), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception as e:  # not installed, or broken
        info["triton_error"] = f"{type(e).__name__}: {e}"
    import volseg

    info["volseg_path"] = str(Path(volseg.__file__).parent)
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_memory_gib=p.total_memory / GIB, gpu_capability=f"{p.major}.{p.minor}",
                    gpu_multiprocessors=p.multi_processor_count, gpu_count=torch.cuda.device_count())
    try:
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm",
                            "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        if q.returncode == 0:
            info["nvidia_smi"] = q.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return info


def cmd_env(args: argparse.Namespace) -> None:
    info = env_info()
    info["versions"] = print_versions(None, file=sys.stderr)  # no peer: MONAI runs in this environment
    write_json(args.out, info)
    print(json.dumps(info, indent=1, default=str))


def _compare(a_path: Path, b_path: Path) -> dict | None:
    """Agreement of two saved outputs: share of equal labels, or the largest probability difference."""
    if not (a_path.is_file() and b_path.is_file()):
        return None
    a, b = torch.load(a_path), torch.load(b_path)
    if a.shape != b.shape:
        return {"error": f"shapes differ: {tuple(a.shape)} and {tuple(b.shape)}"}
    if a.dtype == torch.uint8:
        return {"equal_labels": float((a == b).float().mean())}
    return {"max_abs_probability_difference": float((a.float() - b.float()).abs().max())}


def _run_methods(methods: list[str], base: dict, save_dir: Path, tag: str) -> tuple[dict, dict]:
    """Each method in its own process; returns ``(records, agreement with volseg-torch)``."""
    results, agreement = {}, {}
    for m in methods:
        spec = {**base, "method": m, "save": str(save_dir / f"{tag}_{m}.pt")}
        print(f"[{tag}] {m} ...", file=sys.stderr, flush=True)
        results[m] = run_child(spec)
        r = results[m]
        if "error" not in r:
            print(f"[{tag}] {m}: total {r['total']:.3f} s, network {r['network']:.3f} s, peak {r['peak_mb']:.0f} MiB, "
                  f"slab mode {r['slab_mode']}", file=sys.stderr, flush=True)
        else:
            print(f"[{tag}] {m}: {r['error']}", file=sys.stderr, flush=True)
    for m in methods:
        if m != "volseg-torch":
            agreement[m] = _compare(save_dir / f"{tag}_{m}.pt", save_dir / f"{tag}_volseg-torch.pt")
    return results, agreement


def _methods(device: str) -> tuple[list[str], dict]:
    """The methods that run here and the ones skipped (with the reason)."""
    if triton_usable(device):
        return ["volseg-triton", "volseg-triton-full", "volseg-torch", "monai"], {}
    why = "needs a CUDA device" if device != "cuda" else "Triton not importable (or TRITON_INTERPRET=1)"
    return ["volseg-torch", "monai"], {"volseg-triton": why, "volseg-triton-full": why}


def cmd_bench(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    case = dict(MONAI_CASE if device == "cuda" else (QUICK_CASE if args.quick else CPU_CASE))
    for key in ("size", "patch", "classes", "tile_batch"):
        if getattr(args, key) is not None:
            case[key] = getattr(args, key)
    repeat = args.repeat or (3 if device == "cuda" else (1 if args.quick else 2))
    methods, skipped = _methods(device)
    save_dir = Path(args.save_dir or Path(args.out).parent)
    save_dir.mkdir(parents=True, exist_ok=True)
    base = {"kind": "sliding_window", "device": device, "repeat": repeat, **case}
    results, agreement = _run_methods(methods, base, save_dir, "bench")
    record = {"device": device, "case": case, "repeat": repeat, "is_monai_6427_case": case == MONAI_CASE,
              "results": results, "skipped": skipped, "agreement_with_volseg_torch": agreement,
              "versions": print_versions(None, file=sys.stderr)}
    write_json(args.out, record)
    for m in methods:
        (save_dir / f"bench_{m}.pt").unlink(missing_ok=True)


def cmd_demo(args: argparse.Namespace) -> None:
    from volseg.demo import generate_ms_dataset
    from volseg.planning.plans import load_plans, save_plans
    from volseg.planning.run import plan_and_preprocess

    device = resolve_device(args.device)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"device": device, "dataset": "ms demo", "config": "3d_fullres",
                              "versions": print_versions(None, file=sys.stderr)}
    workers = max(1, min(8, (os.cpu_count() or 2) - 1))
    t0 = time.perf_counter()
    n_cases = max(2, args.cases)
    data = generate_ms_dataset(work / "data", num_cases=n_cases, num_test=0)
    record["generate_seconds"] = time.perf_counter() - t0
    anatomy = json.loads((data / "dataset.json").read_text()).get("anatomy")
    train_config = "3d_fullres" if device == "cuda" else "3d_cpu"
    t0 = time.perf_counter()
    plan_dir = work / "plan"
    plan_and_preprocess(data, plan_dir, device="cuda", configurations=sorted({"3d_fullres", train_config}),
                        num_workers=workers, progress=False)
    record["plan_seconds"] = time.perf_counter() - t0
    plans = load_plans(plan_dir / "plans.json")
    for cfg in plans["configurations"].values():  # a short training: one validation batch per epoch
        cfg["training"]["val_iterations"] = 1
    save_plans(plans, plan_dir / "plans.json")
    config = plans["configurations"]["3d_fullres"]
    case = sorted((plan_dir / "preprocessed" / "3d_fullres").glob("*.npy"))
    case = [c for c in case if not c.stem.endswith(("_seg", "_inst"))][0]
    import numpy as np

    record.update(cases=n_cases, anatomy=anatomy, case=case.stem, case_shape=list(np.load(case, mmap_mode="r").shape),
                  patch=config["patch_size"], batch=config["batch_size"],
                  features=config["network"]["features_per_stage"], mode=plans["outputs"]["mode"],
                  classes=plans["outputs"]["num_outputs"], tile_batch=config["inference"].get("tile_batch", 2))
    tta = device == "cuda" and not args.no_tta
    record["mirror_axes"] = config["inference"]["mirror_axes"] if tta else []
    methods, skipped = _methods(device)
    methods = [m for m in methods if m != "volseg-triton-full"]  # the case is far below the slab budget
    skipped.pop("volseg-triton-full", None)
    base = {"kind": "sliding_window", "device": device, "plan": str(plan_dir), "config": "3d_fullres",
            "case": str(case), "tta": tta, "repeat": args.repeat or (3 if device == "cuda" else 1)}
    results, agreement = _run_methods(methods, base, work, "demo")
    record.update(results=results, skipped=skipped, agreement_with_volseg_torch=agreement, tta=tta)
    write_json(args.out, record)  # the predictions are kept even if the training below fails
    iterations = 4 if device == "cuda" else (1 if args.quick else 2)
    train_spec = {"kind": "train", "device": device, "plan": str(plan_dir), "config": train_config,
                  "model": str(work / "model"), "iterations": iterations, "workers": min(4, workers)}
    print(f"[demo] training {train_config}, {iterations} iterations on {device} ...", file=sys.stderr, flush=True)
    record["training"] = run_child(train_spec)
    record["training"]["dry_run"] = device != "cuda"
    write_json(args.out, record)


SLAB_SCENARIOS = [
    # cap 6 GiB, 16 classes, 448² slices: the full accumulator is 12.8 MB per slice; full mode runs out of
    # memory between 384 and 512 slices, slab mode (128 slices held) fits everywhere.
    {"cap_gib": 6.0, "classes": 16, "yx": 448, "depths": [256, 384, 512, 640], "patch": [128, 128, 128]},
    # cap 3 GiB (a smaller GPU): 8 classes, 512 slices: a 3.3 GB accumulator, under the default 4 GiB budget.
    {"cap_gib": 3.0, "classes": 8, "yx": 448, "depths": [512], "patch": [128, 128, 128]},
]
SLAB_DRY_RUN = [{"cap_gib": 0.0, "classes": 3, "yx": 40, "depths": [32, 48], "patch": [32, 32, 32]}]


def cmd_slab(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    spec = {"kind": "slab", "device": device, "scenarios": SLAB_SCENARIOS if device == "cuda" else SLAB_DRY_RUN}
    rec = run_child(spec)
    rec["versions"] = print_versions(None, file=sys.stderr)
    write_json(args.out, rec)


# --- report -----------------------------------------------------------------------------------------------

def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _steps(work: Path) -> list[dict]:
    steps = []
    path = work / "steps.tsv"
    if path.is_file():
        for line in path.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 3:
                steps.append({"step": parts[0], "status": parts[1], "seconds": float(parts[2] or 0),
                              "note": parts[3] if len(parts) > 3 else ""})
    return steps


def _tests(work: Path) -> dict | None:
    """Totals and failures of the pytest run (its JUnit XML)."""
    import xml.etree.ElementTree as ET

    path = work / "tests.xml"
    if not path.is_file():
        return None
    root = ET.parse(path).getroot()
    cases = list(root.iter("testcase"))
    out = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failures": [], "skip_reasons": {}}
    for c in cases:
        name = f"{c.get('classname', '')}::{c.get('name', '')}"
        kids = {k.tag: k for k in c}
        if "failure" in kids or "error" in kids:
            tag = "failure" if "failure" in kids else "error"
            out["failed" if tag == "failure" else "errors"] += 1
            out["failures"].append({"test": name, "message": (kids[tag].get("message") or "")[:300]})
        elif "skipped" in kids:
            out["skipped"] += 1
            reason = (kids["skipped"].get("message") or "").strip()[:120]
            out["skip_reasons"][reason] = out["skip_reasons"].get(reason, 0) + 1
        else:
            out["passed"] += 1
    out["seconds"] = sum(float(s.get("time", 0)) for s in root.iter("testsuite"))
    return out


def _fmt(v: float | None, digits: int = 2, unit: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{digits}f}{unit}"


def _method_rows(results: dict, device: str) -> list[list[str]]:
    rows = []
    for m, r in results.items():
        if "error" in r:
            rows.append([m, r["error"], "", "", "", "", ""])
            continue
        stitch = r["total"] - r["network"]
        share = stitch / r["network"] if r["network"] > 0 else float("nan")
        mem = r["peak_mb"] * 2 ** 20 / GB
        rows.append([m, _fmt(r["total"], 3), _fmt(r["network"], 3), _fmt(stitch, 3), _fmt(100 * share, 1, "%"),
                     f"{mem:.2f} GB" + ("" if device == "cuda" else " (RSS)"),
                     {True: "slab", False: "full", None: "–"}[r.get("slab_mode")]])
    return rows


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def _aims(bench: dict | None) -> list[dict]:
    """The GPU aims of the sliding window, judged on the benchmark's Triton and MONAI records."""
    aims = [{"aim": "stitching overhead ≤ 5% of the network time (volseg, Triton)"},
            {"aim": "≥ 1.5× faster than MONAI's sliding_window_inference"},
            {"aim": "≤ half of MONAI's peak GPU memory"}]
    if not bench or bench.get("device") != "cuda" or not bench.get("is_monai_6427_case"):
        for a in aims:
            a.update(value=None, met=None, note="not measured: needs the GPU run of MONAI #6427's case")
        return aims
    v, m = bench["results"].get("volseg-triton", {}), bench["results"].get("monai", {})
    if "total" not in v or "total" not in m:
        for a in aims:
            a.update(value=None, met=None, note="a measurement failed")
        return aims
    over = (v["total"] - v["network"]) / v["network"]
    aims[0].update(value=over, met=over <= 0.05, note=f"{100 * over:.1f}%")
    speed = m["total"] / v["total"]
    aims[1].update(value=speed, met=speed >= 1.5, note=f"{speed:.2f}×")
    mem = v["peak_mb"] / m["peak_mb"]
    aims[2].update(value=mem, met=mem <= 0.5, note=f"{mem:.2f} of MONAI's")
    return aims


def cmd_report(args: argparse.Namespace) -> None:
    work, out = Path(args.work), Path(args.out)
    env, bench, demo, slab = (_read(work / f"{n}.json") for n in ("env", "bench", "demo", "slab"))
    steps, tests = _steps(work), _tests(work)
    gpu = bool(env and env.get("cuda_available")) and os.environ.get("CHECK_DEVICE", "auto") != "cpu"
    aims = _aims(bench)
    skipped_parts = []
    if not gpu:
        skipped_parts = [
            "compiled Triton kernels against the torch references (ran under TRITON_INTERPRET=1 instead)",
            "CUDA train step with mixed precision (tests/gpu; the demo training ran on the CPU instead)",
            "CUDA predict, full and slab mode (tests/gpu)",
            "GPU benchmark of MONAI #6427's case (a reduced volume ran on the CPU instead, without Triton)",
            "planner memory estimate against max_memory_allocated (3d_cpu trained on the CPU instead, peak RSS only)",
            "slab mode against a real out-of-memory boundary (a dry run without memory cap instead)",
        ]
    result = {"mode": "gpu" if gpu else "cpu dry run", "env": env, "steps": steps, "tests": tests, "bench": bench,
              "demo": demo, "slab": slab, "aims": aims, "skipped_parts": skipped_parts}
    md = _markdown(result)
    write_json(out / "results.json", result)
    (out / "results.md").write_text(md)
    print(md)


def _machine_line(env: dict | None) -> str:
    if not env:
        return "machine: unknown (the env step did not run)"
    if env.get("cuda_available"):
        gpu = f"{env.get('gpu')} ({_fmt(env.get('gpu_memory_gib'), 1)} GiB, compute capability {env.get('gpu_capability')})"
        smi = f"; nvidia-smi: {env['nvidia_smi']}" if env.get("nvidia_smi") else ""
    else:
        gpu, smi = "none", ""
    return (f"GPU: {gpu}{smi}. CUDA (torch build): {env.get('torch_cuda')}, cuDNN {env.get('cudnn')}, "
            f"torch {env.get('torch')}, Triton {env.get('triton')}, MONAI {env.get('monai')}, "
            f"Python {env.get('python')}. CPU: {env.get('cpu')} ({env.get('cpu_count')} cores). {env.get('date')}.")


def _markdown(r: dict) -> str:
    env = r["env"]
    lines = ["# volseg GPU check", "", f"Mode: **{r['mode']}**.", "", _machine_line(env), "",
             "Memory in GB (10^9 bytes): `torch.cuda.max_memory_allocated` on a GPU, the peak resident set (RSS) of "
             "the measuring process on the CPU. Times in seconds, the fastest of the repeated runs.", ""]
    if r["skipped_parts"]:
        lines += ["No CUDA device: these GPU parts were **skipped**:", ""]
        lines += [f"- {p}" for p in r["skipped_parts"]] + [""]
    lines += ["## Steps", ""]
    lines += _table(["step", "status", "seconds", "note"],
                    [[s["step"], s["status"], f"{s['seconds']:.1f}", s["note"]] for s in r["steps"]]) + [""]
    t = r["tests"]
    if t:
        lines += ["## Tests", "",
                  f"{t['passed']} passed, {t['failed']} failed, {t['errors']} errors (collection errors included), "
                  f"{t['skipped']} skipped in {t['seconds']:.1f} s.", ""]
        lines += [f"- FAILED {f['test']}: {f['message']}" for f in t["failures"]]
        lines += [f"- skipped ×{n}: {why}" for why, n in t["skip_reasons"].items()] + [""]
    b = r["bench"]
    if b:
        c = b["case"]
        title = "×".join(str(s) for s in reversed(c["size"]))
        lines += [f"## Sliding window: {title} voxels (x×y×z), {c['classes']} classes, patch "
                  f"{'×'.join(map(str, c['patch']))}, tile batch {c['tile_batch']} ({b['device']}, "
                  f"fastest of {b['repeat']})", ""]
        if not b.get("is_monai_6427_case"):
            lines += ["Reduced CPU case (not MONAI #6427's), to check the code path only.", ""]
        lines += _table(["method", "total s", "network s", "stitching s", "stitching / network", "peak memory",
                         "mode"], _method_rows(b["results"], b["device"]))
        lines += [f"| {m} | skipped: {why} | | | | | |" for m, why in b["skipped"].items()]
        agree = {m: a for m, a in b["agreement_with_volseg_torch"].items() if a}
        if agree:
            lines += ["", "Labels equal to volseg's torch backend (MONAI's Gaussian is clamped at 1e-3 in 3D, "
                      "volseg's is separable, so near-ties may differ): " + ", ".join(
                f"{m} {100 * a['equal_labels']:.4f}% equal labels" if "equal_labels" in a else f"{m} {a}"
                for m, a in agree.items())]
        lines += [""]
    lines += ["## Aims (GPU)", ""]
    lines += _table(["aim", "measured", "met"],
                    [[a["aim"], a["note"], {True: "yes", False: "**no**", None: "–"}[a["met"]]] for a in r["aims"]])
    lines += [""]
    d = r["demo"]
    if d:
        lines += [f"## Demo `3d_fullres` plan ({d['dataset']}, {d.get('anatomy')} anatomy, {d.get('cases')} cases), "
                  f"case {d.get('case')} {d.get('case_shape')}, patch {d.get('patch')}, {d.get('classes')} "
                  f"{d.get('mode')} outputs, mirroring {d.get('mirror_axes')} ({d['device']})", ""]
        if d.get("results"):
            lines += _table(["method", "total s", "network s", "stitching s", "stitching / network", "peak memory",
                             "mode"], _method_rows(d["results"], d["device"]))
            lines += [f"| {m} | skipped: {why} | | | | | |" for m, why in d.get("skipped", {}).items()]
            agree = {m: a for m, a in d.get("agreement_with_volseg_torch", {}).items() if a}
            if agree:
                lines += ["", "Largest probability difference to volseg's torch backend: " + ", ".join(
                    f"{m} {a.get('max_abs_probability_difference', a)}" for m, a in agree.items())]
            lines += [""]
        tr = d.get("training")
        if tr:
            lines += ["### Planner memory estimate against the measured peak", ""]
            if "error" in tr:
                lines += [f"Training failed: {tr['error']}", ""]
            elif tr.get("dry_run"):
                lines += [f"Dry run on the CPU ({tr['config']}, {tr['iterations']} iteration(s), {tr['seconds']:.1f} s, "
                          f"loss {_fmt(tr.get('train_loss'), 4)}): the planner's estimate "
                          f"{_fmt(tr.get('estimate_gb'), 3)} GB (fp32), peak RSS of the process "
                          f"{_fmt(tr.get('peak_rss_gb'), 2)} GB (not comparable: not the GPU "
                          "measurement).", ""]
            else:
                meas, est = tr["max_memory_allocated_gb"], tr["estimate_without_overhead_gb"]
                lines += _table(["configuration", "patch, batch", "planner estimate (with 1 GB fixed)",
                                 "estimate without the fixed 1 GB", "max_memory_allocated", "max_memory_reserved",
                                 "measured / estimate"],
                                [[tr["config"], f"{tr['patch']}, {tr['batch']}", f"{tr['estimate_gb']:.3f} GB",
                                  f"{est:.3f} GB", f"{meas:.3f} GB", f"{tr['max_memory_reserved_gb']:.3f} GB",
                                  f"{meas / est:.2f}" if est > 0 else "–"]])
                lines += ["", f"{tr['iterations']} iterations with mixed precision in {tr['seconds']:.1f} s, "
                          f"last loss {_fmt(tr.get('train_loss'), 4)}.", ""]
    s = r["slab"]
    if s:
        lines += ["## Slab mode against a real out-of-memory boundary", ""]
        if "error" in s:
            lines += [f"Failed: {s['error']}", ""]
        else:
            if s.get("dry_run"):
                lines += ["Dry run on the CPU (no memory cap, tiny volumes): the code path only.", ""]
            budget = s["default_budget_bytes"] / GIB
            rows = []
            for sc in s["scenarios"]:
                by_depth: dict[int, dict] = {}
                for run in sc["runs"]:
                    by_depth.setdefault(run["depth"], {})[run["mode"]] = run
                for z, modes in by_depth.items():
                    def res(m: str) -> str:
                        x = modes.get(m)
                        if x is None:
                            return "–"
                        if not x["ok"]:
                            return "out of memory"
                        peak = f", {x['peak_gb']:.2f} GB" if "peak_gb" in x else ""
                        return f"ok ({x['seconds']:.2f} s{peak})"
                    auto = modes.get("auto", {})
                    slab_auto = auto.get("slab_mode") if auto.get("ok") else auto.get("auto_expects_slab")
                    chose = "slab" if slab_auto else "full"
                    only_slab = modes.get("full", {}).get("ok") is False and modes.get("slab", {}).get("ok")
                    rows.append([f"{sc['cap_gib']:g} GiB" if not s.get("dry_run") else "none",
                                 f"{sc['classes']} × {z}×{sc['yx']}×{sc['yx']}",
                                 f"{next(iter(modes.values()))['accumulator_bytes'] / GB:.2f} GB",
                                 res("full"), res("slab"), f"{chose}: {res('auto')}",
                                 "yes" if only_slab else "no"])
            lines += _table(["memory cap", "K × volume", "full accumulator", "full mode", "slab mode",
                             f"automatic (budget {budget:g} GiB)", "fits only in slab mode"], rows)
            lines += [""]
    return "\n".join(lines) + "\n"


# --- command line -----------------------------------------------------------------------------------------

def main() -> None:
    if len(sys.argv) >= 3 and sys.argv[1] == "child":
        child_main(json.loads(sys.argv[2]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("env")
    p.add_argument("--out", required=True)
    p = sub.add_parser("bench")
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--size", type=int, nargs=3, help="volume (z, y, x)")
    p.add_argument("--patch", type=int, nargs=3)
    p.add_argument("--classes", type=int)
    p.add_argument("--tile-batch", type=int)
    p.add_argument("--repeat", type=int, help="runs per method; the fastest counts")
    p.add_argument("--save-dir", help="where the outputs compared between methods are kept for a while")
    p.add_argument("--quick", action="store_true", help="a tiny volume on the CPU")
    p = sub.add_parser("demo")
    p.add_argument("--out", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--cases", type=int, default=12, help="training cases of the generated demo dataset")
    p.add_argument("--repeat", type=int)
    p.add_argument("--no-tta", action="store_true")
    p.add_argument("--quick", action="store_true")
    p = sub.add_parser("slab")
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="auto")
    p = sub.add_parser("report")
    p.add_argument("--work", required=True)
    p.add_argument("--out", required=True)
    args = ap.parse_args()
    {"env": cmd_env, "bench": cmd_bench, "demo": cmd_demo, "slab": cmd_slab, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
