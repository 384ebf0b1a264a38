"""Sliding-window inference: volseg against MONAI (and nnU-Net v2 when installed), same network and volume.

Each method runs in its own process (so peak memory is its own) on the same volume with
the same network weights, overlap 0.5, Gaussian weighting (σ = patch/8) and tile batch;
every process imports both volseg and MONAI first (equal imports), and both return labels
only (the argmax of the averaged logits, taken the same way: ``common.monai_labels``).
Reported per method: wall time, pure network time (the forward passes, timed inside the
run), stitching overhead = (total − network) / network, and peak memory (resident set on
the CPU, ``torch.cuda.max_memory_allocated`` on a GPU). Ratios are printed side by side.

nnU-Net v2's predictor (``nnUNetPredictor.predict_sliding_window_return_logits``) runs in
its own environment (``bash scripts/setup_peers.sh``) with its own ``PlainConvUNet`` of the
same topology (same cost per forward pass, its own random weights); it predicts one tile at
a time, whatever ``--tile-batch`` says.

Usage:
    python benchmarks/inference/bench_sliding_window.py [--size 128 160 160] [--patch 64 96 96]
        [--classes 4] [--device cpu|cuda] [--tta] [--repeat 2]
        [--nnunet-python ../peers/nnunet/bin/python] [--network unet|tiny] [--table [--warmup]]

``--table``: the engine alone (``--network tiny``: one multiply-add per voxel and class) over
K = 2, 8, 32 classes and two volumes,
volseg in full and slab mode against MONAI: time and peak memory. ``--warmup`` predicts once on
a patch-sized image in every process before the memory baseline (both methods), so that the
runtime's first-use costs are not counted as the engine's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1]))  # benchmarks/
from common import (DEFAULT_PEER, cpu_flags, cpu_name, monai_labels, peak_rss_mb, print_versions,  # noqa: E402
                    reset_peak_rss)


class PerVoxelAffine(torch.nn.Module):
    """(B, 1, z, y, x) → (B, K, z, y, x): ``w_k · x + b_k`` per voxel, one multiply-add into the
    output and nothing else. A 1×1×1 ``Conv3d`` computes the same, but on the CPU its oneDNN path
    pads the 1 input and K output channels to blocks of 16 and holds scratch for them (64 MB per
    call at K = 2 for a batch of 2 × 64³ tiles), which would count as the engine's memory in
    every process."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(classes, 1, 1, 1))
        self.bias = torch.nn.Parameter(torch.randn(classes, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.bias, x, self.weight)


def build_network(classes: int, patch: list[int], kind: str = "unet") -> torch.nn.Module:
    """A volseg 3D U-Net of a CPU plan's size (16→256 features, 5 stages), fixed weights; or, with
    ``kind="tiny"``, a :class:`PerVoxelAffine` map, so that the engine's own cost dominates."""
    from volseg.networks import from_plans

    torch.manual_seed(0)
    if kind == "tiny":
        return PerVoxelAffine(classes).eval()
    cfg = {"architecture": "unet", "features_per_stage": [16, 32, 64, 128, 256],
           "kernel_sizes": [[3, 3, 3]] * 5, "strides": [[1, 1, 1]] + [[2, 2, 2]] * 4,
           "n_conv_per_stage": [2] * 5, "n_conv_per_stage_decoder": [2] * 4, "deep_supervision": False}
    return from_plans(cfg, 1, classes).eval()


class Timed(torch.nn.Module):
    """Wraps a network and adds up the seconds spent in its forward passes."""

    def __init__(self, net: torch.nn.Module, device: torch.device):
        super().__init__()
        self.net, self.device, self.seconds = net, device, 0.0

    def forward(self, x):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = self.net(x)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - t0
        return out


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb() -> float:
    """Resident set of this process now (MB)."""
    return _status_mb("VmRSS:")


def checksum(labels: torch.Tensor) -> int:
    """Sum of a label map, 1 Mi voxels at a time: a uint8 tensor's ``sum()`` makes an int64 copy
    of the whole map first, which would count in the peak memory of the method measured."""
    flat = labels.reshape(-1)
    return sum(int(c.sum()) for c in flat.split(1 << 20))


def best_of(repeat: int, device: torch.device, net: torch.nn.Module, predict) -> dict:
    """Fastest of ``repeat`` timed runs of ``predict(timed_net) -> labels``, plus the process's peak memory.

    Returns:
        ``{"total", "network"}`` seconds of the fastest run, ``"labels_sum"`` (a checksum) and
        ``"peak_mb"`` (CUDA peak allocation on a GPU, peak resident set on the CPU).
    """
    best = None
    for _ in range(repeat):
        timed = Timed(net, device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.inference_mode():
            labels = predict(timed)
        if device.type == "cuda":
            torch.cuda.synchronize()
        total = time.perf_counter() - t0
        rec = {"total": total, "network": timed.seconds, "labels_sum": checksum(labels)}
        if best is None or total < best["total"]:
            best = rec
    best["peak_mb"] = (torch.cuda.max_memory_allocated() / 2 ** 20) if device.type == "cuda" else peak_rss_mb()
    return best


METHODS = ("volseg", "volseg-slab", "volseg-full", "monai")


def run_one(method: str, args: argparse.Namespace) -> dict:
    """One method in this (child) process. Both libraries are imported whatever the method, so
    that every process starts from the same resident set (equal imports)."""
    from monai.inferers import sliding_window_inference

    from volseg.inference.sliding_window import predict_sliding_window

    device = torch.device(args.device)
    net = build_network(args.classes, args.patch, args.network).to(device)
    torch.manual_seed(1)
    image = torch.randn(1, *args.size)
    mirror = (0, 1, 2) if args.tta else ()
    slab = {"volseg": None, "volseg-slab": True, "volseg-full": False}.get(method)

    def predict(timed: Timed, image: torch.Tensor = image) -> torch.Tensor:
        if method.startswith("volseg"):
            return predict_sliding_window(timed, image, args.patch, args.classes, mirror_axes=mirror,
                                          tile_batch=args.tile_batch, device=device, slab=slab).labels
        x = image[None].to(device)
        logits = None
        for axes in [()] + ([(0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)] if mirror else []):
            dims = [a + 2 for a in axes]
            xi = torch.flip(x, dims) if dims else x
            out = sliding_window_inference(xi, args.patch, args.tile_batch, timed, overlap=0.5,
                                           mode="gaussian", sigma_scale=0.125, sw_device=device, device=device)
            out = torch.flip(out, dims) if dims else out
            logits = out if logits is None else logits + out
        return monai_labels(logits[0])

    if args.warmup:  # first-use costs of the runtime (code pages, thread pools, kernel caches) before the baseline
        with torch.inference_mode():
            predict(Timed(net, device), torch.randn(1, *args.patch))
    reset_peak_rss()  # the peak counts from here: not the input's or the warm-up's
    baseline = rss_mb()
    rec = best_of(args.repeat, device, net, predict)
    rec["baseline_mb"] = baseline
    return rec


def child(method: str, argv: list[str]) -> dict:
    """Run ``method`` in a fresh process (so that its peak memory is its own)."""
    proc = subprocess.run([sys.executable, str(HERE), "--method", method, *argv], capture_output=True, text=True,
                          env={**os.environ})
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def alternating(methods, argv: list[str], rounds: int) -> dict:
    """Each method in its own process, the methods taking turns for ``rounds`` rounds (so that a
    busy or throttled moment of the machine hits all of them); the fastest run of each counts."""
    best: dict = {}
    for _ in range(rounds):
        for m in methods:
            rec = child(m, argv)
            if m not in best or rec["total"] < best[m]["total"]:
                best[m] = rec
    return best


def table(args: argparse.Namespace) -> None:
    """Peak memory and time of the engine (a :class:`PerVoxelAffine` network) over classes × volumes."""
    from volseg.inference.dense import slab_axis

    print(f"device: cpu ({cpu_name()} ({cpu_flags()}), {os.cpu_count()} cores); network: one multiply-add per voxel; "
          f"patch {args.patch}, tile batch {args.tile_batch}, labels only, every process imports volseg and MONAI")
    print(f"{'K':>3} {'volume':>14} | " + " | ".join(f"{m:>22}" for m in ("volseg-full", "volseg-slab", "monai"))
          + " | slab/monai mem (engine; process), time")
    for k in (2, 8, 32):
        for size in ((96, 160, 160), (192, 320, 320)):
            argv = ["--size", *map(str, size), "--patch", *map(str, args.patch), "--classes", str(k),
                    "--tile-batch", str(args.tile_batch), "--repeat", "1", "--network", "tiny",
                    *(["--warmup"] if args.warmup else [])]
            res = alternating(("volseg-full", "volseg-slab", "monai"), argv, args.rounds)
            cells = [f"{r['total']:6.2f} s {r['peak_mb'] - r['baseline_mb']:7.0f} MB" for r in res.values()]
            slab, monai = res["volseg-slab"], res["monai"]
            cells[1] += f" ({'zy'[slab_axis(size, args.patch)]})"
            engine = (slab["peak_mb"] - slab["baseline_mb"]) / (monai["peak_mb"] - monai["baseline_mb"])
            mem = slab["peak_mb"] / monai["peak_mb"]
            tim = min(res["volseg-full"]["total"], slab["total"]) / monai["total"]
            own = min(r["total"] - r["network"] for m, r in res.items() if m != "monai") / \
                (monai["total"] - monai["network"])  # the engine's own seconds: without the forward passes
            same = len({r["labels_sum"] for r in res.values()}) == 1
            print(f"{k:>3} {'×'.join(map(str, size)):>14} | " + " | ".join(f"{c:>22}" for c in cells)
                  + f" | {engine:.2f}×; {mem:.2f}×, {tim:.2f}× ({own:.2f}×)"
                  + f" | {'same' if same else 'DIFFERENT'} label sums",
                  flush=True)
    after = "the imports and one warm-up prediction on a patch-sized image" if args.warmup else "the imports"
    print(f"MB: peak resident set above the process's resident set after {after}; memory ratios: volseg slab / "
          "MONAI, of those MB (engine) and of the whole-process peaks; time: fastest volseg mode / MONAI (in brackets: "
          "of the seconds outside the forward passes); (z) or (y): the slab axis")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, nargs=3, default=[128, 160, 160])
    ap.add_argument("--patch", type=int, nargs=3, default=[64, 96, 96])
    ap.add_argument("--classes", type=int, default=4)
    ap.add_argument("--tile-batch", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tta", action="store_true", help="mirroring over all three axes (8 passes)")
    ap.add_argument("--repeat", type=int, default=2, help="runs per method and process; the fastest counts")
    ap.add_argument("--rounds", type=int, default=3,
                    help="--table: processes per method, the methods taking turns; the fastest counts (default 3)")
    ap.add_argument("--network", choices=["unet", "tiny"], default="unet",
                    help="unet: a CPU plan's U-Net; tiny: one multiply-add per voxel (the engine's own cost)")
    ap.add_argument("--table", action="store_true",
                    help="peak memory and time over K = 2, 8, 32 and two volumes, tiny network, volseg full and "
                         "slab mode against MONAI")
    ap.add_argument("--warmup", action="store_true",
                    help="predict once on a patch-sized image before the memory baseline, in every process, so that "
                         "the runtime's first-use costs are not counted as the engine's")
    ap.add_argument("--nnunet-python", type=Path, default=DEFAULT_PEER)
    ap.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.method:  # child process
        print(json.dumps(run_one(args.method, args)))
        return
    print_versions(args.nnunet_python)  # MONAI runs in volseg's environment, nnU-Net in its own
    if args.table:
        table(args)
        return
    results = {m: child(m, sys.argv[1:]) for m in ("volseg", "monai")}
    if args.network == "tiny":
        print("nnU-Net v2 not run: its peer script builds its own U-Net, not the one-convolution network")
    elif args.nnunet_python.is_file():
        spec = {"size": args.size, "patch": args.patch, "classes": args.classes, "tta": args.tta,
                "repeat": args.repeat, "device": args.device}
        proc = subprocess.run([str(args.nnunet_python), str(HERE.parents[1] / "peers" / "nnunet_sliding_window.py"),
                               json.dumps(spec)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-3000:])
        results["nnU-Net"] = json.loads(proc.stdout.strip().splitlines()[-1])
    name = torch.cuda.get_device_name() if args.device == "cuda" else f"{cpu_name()} ({cpu_flags()})"
    print(f"device: {args.device} ({name}, {os.cpu_count()} cores); volume {args.size}, patch {args.patch}, "
          f"{args.classes} classes, tile batch {args.tile_batch}, TTA {'on' if args.tta else 'off'}")
    if "nnU-Net" not in results and args.network != "tiny":
        print(f"nnU-Net v2 not found at {args.nnunet_python}: its predictor is not measured "
              "(bash scripts/setup_peers.sh installs it, or pass --nnunet-python)")
    print(f"{'method':<10}{'total s':>10}{'network s':>11}{'overhead':>10}{'peak MB':>10}{'above imports':>15}")
    for m, r in results.items():
        over = (r["total"] - r["network"]) / r["network"]
        print(f"{m:<10}{r['total']:>10.2f}{r['network']:>11.2f}{100 * over:>9.1f}%{r['peak_mb']:>10.0f}"
              f"{r['peak_mb'] - r['baseline_mb']:>12.0f} MB")
    v = results["volseg"]
    print("peak MB: the whole process (volseg's and MONAI's import both libraries, nnU-Net's runs in its own "
          "environment); above imports: the peak above the resident set after the imports and set-up")
    print()
    for m in results:
        if m != "volseg":
            r = results[m]
            above = (r["peak_mb"] - r["baseline_mb"]) / (v["peak_mb"] - v["baseline_mb"])
            print(f"{m} / volseg: time {r['total'] / v['total']:.2f}×, peak memory {r['peak_mb'] / v['peak_mb']:.2f}× "
                  f"(above the imports {above:.2f}×)")


if __name__ == "__main__":
    main()
