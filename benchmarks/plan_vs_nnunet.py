"""Fingerprint + preprocessing: volseg against nnU-Net v2 on the same demo dataset and cores.

Prints both plans side by side (spacing, patch, batch, pooling) and the wall time of each
tool's fingerprint + preprocessing run, measured in one run on the same machine.

nnU-Net v2 is a peer, never a dependency of volseg: install it in its own virtual
environment (``bash scripts/setup_peers.sh`` makes ``../peers/nnunet``) and point to its
Python with ``--nnunet-python``; without it only volseg is measured and the script says so.

Usage:
    python benchmarks/plan_vs_nnunet.py [--dataset ms|lung] [--cases 12] [--workers 2]
        [--nnunet-python ../peers/nnunet/bin/python] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_PEER, cpu_flags, cpu_name, print_versions  # noqa: E402  (DEFAULT_PEER: also imported from here)


def run(cmd: list[str], env: dict | None = None) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        print(proc.stdout[-4000:])
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}")
    return time.perf_counter() - t0


def make_dataset(kind: str, cases: int, root: Path, source: Path | None = None) -> Path:
    """The benchmark dataset under ``root``: a demo dataset, or a copy of ``source``."""
    out = root / "Dataset501_VolsegDemo"
    if source is not None:
        shutil.copytree(source, out, dirs_exist_ok=True)
        return out
    run([sys.executable, "-m", "volseg", "demo-data", kind, "--out", str(out), "--cases", str(cases), "--seed", "0"])
    if kind == "lung":  # nnU-Net reads label maps as classes: turn instances into one "nodule" class
        import numpy as np

        from volseg.io.nifti import read_image, write_image

        meta = json.loads((out / "dataset.json").read_text())
        for p in sorted((out / "labelsTr").glob("*.nii.gz")):
            lab, geom = read_image(p)
            write_image(p, (lab > 0).astype(np.uint8), geom)
        for p in (out / "labelsTr").glob("*.json"):
            p.unlink()
        meta.update(task="segmentation", instance_labels=False)
        (out / "dataset.json").write_text(json.dumps(meta, indent=2))
    return out


def volseg_plan(dataset: Path, out: Path, workers: int) -> tuple[float, dict]:
    seconds = run([sys.executable, "-m", "volseg", "plan", str(dataset), "-o", str(out), "--device", "cuda",
                   "-c", "3d_fullres", "-j", str(workers)])
    return seconds, json.loads((out / "plans.json").read_text())


def nnunet_plan(python: Path, dataset: Path, root: Path, workers: int) -> tuple[float, dict]:
    raw, pre, res = root / "nnUNet_raw", root / "nnUNet_preprocessed", root / "nnUNet_results"
    for d in (raw, pre, res):
        d.mkdir(parents=True, exist_ok=True)
    shutil.copytree(dataset, raw / dataset.name, dirs_exist_ok=True)
    meta = json.loads((raw / dataset.name / "dataset.json").read_text())
    for key in ("task", "timepoints", "instance_labels"):
        meta.pop(key, None)  # nnU-Net ignores unknown keys, but keep its input minimal
    (raw / dataset.name / "dataset.json").write_text(json.dumps(meta, indent=2))
    env = {**os.environ, "nnUNet_raw": str(raw), "nnUNet_preprocessed": str(pre), "nnUNet_results": str(res)}
    entry = python.parent / "nnUNetv2_plan_and_preprocess"
    seconds = run([str(entry), "-d", "501", "-c", "3d_fullres", "-np", str(workers), "-npfp", str(workers)], env)
    plans = json.loads((pre / dataset.name / "nnUNetPlans.json").read_text())
    return seconds, plans


def side_by_side(vs: dict, nn: dict | None) -> str:
    c = vs["configurations"]["3d_fullres"]
    rows = [("spacing (z, y, x mm)", c["spacing"]), ("patch (z, y, x)", c["patch_size"]),
            ("batch", c["batch_size"]), ("pooling per stage", c["network"]["strides"][1:]),
            ("features", c["network"]["features_per_stage"])]
    out = [f"{'':<24}{'volseg':<52}{'nnU-Net v2'}"]
    n = nn["configurations"]["3d_fullres"] if nn else None
    nn_vals = [None] * 5
    if n:
        arch = n.get("architecture", {}).get("arch_kwargs", {})
        nn_vals = [[round(s, 4) for s in n["spacing"]], n["patch_size"], n["batch_size"],
                   (arch.get("strides") or n.get("pool_op_kernel_sizes"))[1:], arch.get("features_per_stage")]
    for (label, v), w in zip(rows, nn_vals):
        v = [round(x, 4) for x in v] if label.startswith("spacing") else v
        out.append(f"{label:<24}{str(v):<52}{'-' if w is None else w}")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=["ms", "lung"], default="ms")
    ap.add_argument("--cases", type=int, default=12)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--nnunet-python", type=Path, default=DEFAULT_PEER)
    ap.add_argument("--dataset-dir", type=Path, help="use this dataset folder instead of a demo dataset")
    ap.add_argument("--work", type=Path, help="working folder (default: a temporary one)")
    args = ap.parse_args()
    root = args.work or Path(tempfile.mkdtemp(prefix="volseg_plan_bench_"))
    root.mkdir(parents=True, exist_ok=True)
    dataset = make_dataset(args.dataset, args.cases, root, args.dataset_dir)
    print(f"machine: {cpu_name()} ({cpu_flags()}), {os.cpu_count()} cores; "
          f"dataset: {args.dataset} demo, {args.cases} cases; workers: {args.workers}")
    print_versions(args.nnunet_python)
    t_vs, vs = volseg_plan(dataset, root / "volseg", args.workers)
    nn, t_nn = None, None
    if args.nnunet_python.is_file():
        t_nn, nn = nnunet_plan(args.nnunet_python, dataset, root, args.workers)
    else:
        print(f"nnU-Net v2 not found at {args.nnunet_python}: only volseg is measured "
              "(bash scripts/setup_peers.sh installs it, or pass --nnunet-python)")
    print(side_by_side(vs, nn))
    print(f"\nfingerprint + preprocess wall time: volseg {t_vs:.1f} s", end="")
    if t_nn is not None:
        print(f"   nnU-Net v2 {t_nn:.1f} s   ratio nnU-Net / volseg = {t_nn / t_vs:.2f}×")
    else:
        print()


if __name__ == "__main__":
    main()
