"""Training throughput: volseg's trainer against nnU-Net v2's on the same data, network and patch.

Plans the demo dataset with volseg, trains two short epochs at the planned patch and batch
(the first warms up, the second is measured) and reports iterations per second and the
share of training time spent waiting for data. When nnU-Net v2 is installed in its own
environment (``bash scripts/setup_peers.sh``), its plan is edited to volseg's spacing,
patch, batch and topology, its preprocessing re-run, and ``nnUNetTrainer`` timed the same
way with the same number of augmentation workers; both are printed side by side.

Usage:
    python benchmarks/train_throughput.py [--dataset ms] [-c 3d_cpu] [--iters 20] [--workers 1]
        [--device cpu|cuda] [--nnunet-python ../peers/nnunet/bin/python]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_PEER, cpu_flags, cpu_name, print_versions  # noqa: E402
from plan_vs_nnunet import make_dataset, nnunet_plan, run  # noqa: E402

HERE = Path(__file__).resolve().parent


def volseg_throughput(plan_dir: Path, config: str, iters: int, workers: int, device: str) -> dict:
    model = plan_dir / "bench_model"
    run([sys.executable, "-m", "volseg", "train", str(plan_dir), "-c", config, "-o", str(model), "--fold", "0",
         "--epochs", "2", "--iters", str(iters), "-j", str(workers), "--device", device, "--no-progress"])
    last = json.loads((model / "fold_0" / "log.jsonl").read_text().splitlines()[-1])
    return {"its": iters / last["train_seconds"], "wait": last["data_wait_share"]}


def align_nnunet_plan(pre: Path, dataset: str, cfg: dict) -> None:
    """Give nnU-Net's 3d_fullres volseg's spacing, patch, batch and topology."""
    path = pre / dataset / "nnUNetPlans.json"
    plans = json.loads(path.read_text())
    c = plans["configurations"]["3d_fullres"]
    net = cfg["network"]
    c.update(spacing=cfg["spacing"], patch_size=cfg["patch_size"], batch_size=cfg["batch_size"])
    c["architecture"]["arch_kwargs"].update(
        n_stages=len(net["strides"]), features_per_stage=net["features_per_stage"], kernel_sizes=net["kernel_sizes"],
        strides=net["strides"], n_conv_per_stage=net["n_conv_per_stage"],
        n_conv_per_stage_decoder=net["n_conv_per_stage_decoder"])
    path.write_text(json.dumps(plans, indent=2))


def nnunet_throughput(python: Path, dataset: Path, root: Path, cfg: dict, iters: int, workers: int) -> dict:
    nnunet_plan(python, dataset, root, workers)
    pre = root / "nnUNet_preprocessed"
    align_nnunet_plan(pre, dataset.name, cfg)
    env = {**os.environ, "nnUNet_raw": str(root / "nnUNet_raw"), "nnUNet_preprocessed": str(pre),
           "nnUNet_results": str(root / "nnUNet_results"), "nnUNet_n_proc_DA": str(workers), "nnUNet_compile": "f"}
    run([str(python.parent / "nnUNetv2_preprocess"), "-d", "501", "-c", "3d_fullres", "-np", str(workers)], env)
    out = root / "nnunet_throughput.json"
    proc = subprocess.run([str(python), str(HERE / "peers" / "nnunet_train.py"), "501", "2", str(iters), "2", str(out)],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        print(proc.stdout[-3000:])
        raise SystemExit("nnU-Net training failed")
    last = json.loads(out.read_text())["epochs"][-1]
    return {"its": iters / last["train_seconds"], "wait": float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=["ms", "lung"], default="ms")
    ap.add_argument("--cases", type=int, default=12)
    ap.add_argument("-c", "--configuration", default="3d_cpu")
    ap.add_argument("--iters", type=int, default=20, help="iterations of the measured epoch")
    ap.add_argument("--workers", type=int, default=1, help="augmentation processes for both trainers")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--nnunet-python", type=Path, default=DEFAULT_PEER)
    ap.add_argument("--dataset-dir", type=Path, help="use this dataset folder instead of a demo dataset")
    ap.add_argument("--work", type=Path)
    args = ap.parse_args()
    root = args.work or Path(tempfile.mkdtemp(prefix="volseg_train_bench_"))
    root.mkdir(parents=True, exist_ok=True)
    dataset = make_dataset(args.dataset, args.cases, root, args.dataset_dir)
    plan_dir = root / "volseg"
    run([sys.executable, "-m", "volseg", "plan", str(dataset), "-o", str(plan_dir), "-c", args.configuration,
         "--device", args.device])
    cfg = json.loads((plan_dir / "plans.json").read_text())["configurations"][args.configuration]
    print(f"machine: {cpu_name()} ({cpu_flags()}), {os.cpu_count()} cores, device {args.device}; "
          f"{args.dataset_dir or (args.dataset + ' demo')}, {args.configuration}: patch {cfg['patch_size']}, "
          f"batch {cfg['batch_size']}, "
          f"features {cfg['network']['features_per_stage']}, {args.workers} augmentation worker(s)")
    print_versions(args.nnunet_python if args.device == "cpu" else None)  # nnU-Net runs on the CPU only
    vs = volseg_throughput(plan_dir, args.configuration, args.iters, args.workers, args.device)
    nn = None
    if args.nnunet_python.is_file() and args.device == "cpu":
        nn = nnunet_throughput(args.nnunet_python, dataset, root, cfg, args.iters, args.workers)
    elif not args.nnunet_python.is_file():
        print(f"nnU-Net v2 not found at {args.nnunet_python}: only volseg is measured")
    print(f"\n{'':<14}{'iterations/s':>14}{'data wait':>12}")
    print(f"{'volseg':<14}{vs['its']:>14.3f}{100 * vs['wait']:>11.1f}%")
    if nn:
        print(f"{'nnU-Net v2':<14}{nn['its']:>14.3f}{'n/a':>12}")
        print(f"\nvolseg / nnU-Net iterations per second: {vs['its'] / nn['its']:.2f}×")


if __name__ == "__main__":
    main()
