"""Sliding-window inference: volseg against MONAI (and nnU-Net v2 when installed), same network and volume.

Each method runs in its own process (so peak memory is its own) on the same volume with
the same network weights, overlap 0.5, Gaussian weighting (σ = patch/8) and tile batch.
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
        [--nnunet-python ../peers/nnunet/bin/python]
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
from common import DEFAULT_PEER, cpu_flags, cpu_name, print_versions  # noqa: E402


def build_network(classes: int, patch: list[int]) -> torch.nn.Module:
    """A volseg 3D U-Net of a CPU plan's size (16→256 features, 5 stages), fixed weights."""
    from volseg.networks import from_plans

    torch.manual_seed(0)
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


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


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
        rec = {"total": total, "network": timed.seconds, "labels_sum": int(labels.sum())}
        if best is None or total < best["total"]:
            best = rec
    best["peak_mb"] = (torch.cuda.max_memory_allocated() / 2 ** 20) if device.type == "cuda" else peak_rss_mb()
    return best


def run_one(method: str, args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    net = build_network(args.classes, args.patch).to(device)
    torch.manual_seed(1)
    image = torch.randn(1, *args.size)
    mirror = (0, 1, 2) if args.tta else ()
    # import outside the timed runs, and only the method measured (peak memory is per process)
    if method == "volseg":
        from volseg.inference.sliding_window import predict_sliding_window
    else:
        from monai.inferers import sliding_window_inference

    def predict(timed: Timed) -> torch.Tensor:
        if method == "volseg":
            return predict_sliding_window(timed, image, args.patch, args.classes, mirror_axes=mirror,
                                          tile_batch=args.tile_batch, device=device).labels
        x = image[None].to(device)
        logits = None
        for axes in [()] + ([(0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)] if mirror else []):
            dims = [a + 2 for a in axes]
            xi = torch.flip(x, dims) if dims else x
            out = sliding_window_inference(xi, args.patch, args.tile_batch, timed, overlap=0.5,
                                           mode="gaussian", sigma_scale=0.125, sw_device=device, device=device)
            out = torch.flip(out, dims) if dims else out
            logits = out if logits is None else logits + out
        return torch.softmax(logits[0], 0).argmax(0).to(torch.uint8).cpu()

    return best_of(args.repeat, device, net, predict)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, nargs=3, default=[128, 160, 160])
    ap.add_argument("--patch", type=int, nargs=3, default=[64, 96, 96])
    ap.add_argument("--classes", type=int, default=4)
    ap.add_argument("--tile-batch", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tta", action="store_true", help="mirroring over all three axes (8 passes)")
    ap.add_argument("--repeat", type=int, default=2, help="runs per method; the fastest counts")
    ap.add_argument("--nnunet-python", type=Path, default=DEFAULT_PEER)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.method:  # child process
        print(json.dumps(run_one(args.method, args)))
        return
    print_versions(args.nnunet_python)  # MONAI runs in volseg's environment, nnU-Net in its own
    results = {}
    for method in ("volseg", "monai"):
        cmd = [sys.executable, str(HERE), "--method", method, *sys.argv[1:]]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-3000:])
        results[method] = json.loads(proc.stdout.strip().splitlines()[-1])
    if args.nnunet_python.is_file():
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
    if "nnU-Net" not in results:
        print(f"nnU-Net v2 not found at {args.nnunet_python}: its predictor is not measured "
              "(bash scripts/setup_peers.sh installs it, or pass --nnunet-python)")
    print(f"{'method':<10}{'total s':>10}{'network s':>11}{'overhead':>10}{'peak MB':>10}")
    for m, r in results.items():
        over = (r["total"] - r["network"]) / r["network"]
        print(f"{m:<10}{r['total']:>10.2f}{r['network']:>11.2f}{100 * over:>9.1f}%{r['peak_mb']:>10.0f}")
    v = results["volseg"]
    print()
    for m in results:
        if m != "volseg":
            r = results[m]
            print(f"{m} / volseg: time {r['total'] / v['total']:.2f}×, peak memory {r['peak_mb'] / v['peak_mb']:.2f}×")


if __name__ == "__main__":
    main()
