"""benchmarks/gpu/check.sh and its bench_gpu.py: the report of a GPU run (from records shaped like one)
and the script's CPU path (its GPU parts marked skipped)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu" / "check.sh"
BENCH = ROOT / "benchmarks" / "gpu" / "bench_gpu.py"


def _method(total: float, network: float, peak_mib: float, slab: bool | None, method: str) -> dict:
    return {"total": total, "network": network, "labels_sum": 1, "peak_mb": peak_mib, "method": method,
            "slab_mode": slab, "peak_kind": "max_memory_allocated"}


def _gpu_records(work: Path) -> None:
    """The JSON files of a GPU run, as its steps write them (made-up numbers)."""
    env = {"python": "3.12.3", "torch": "2.11.0+cu130", "torch_cuda": "13.0", "cuda_available": True,
           "cudnn": 91300, "triton": "3.6.0", "monai": "1.6.1", "cpu": "AMD EPYC", "cpu_count": 16,
           "gpu": "NVIDIA H200", "gpu_memory_gib": 139.8, "gpu_capability": "9.0", "date": "today",
           "nvidia_smi": "NVIDIA H200, 580.159.04, 143771 MiB"}
    case = {"size": [256, 384, 384], "patch": [128, 128, 128], "classes": 100, "tile_batch": 2}
    bench = {"device": "cuda", "case": case, "repeat": 3, "is_monai_6427_case": True, "skipped": {},
             "results": {"volseg-triton": _method(1.05, 0.97, 12000, True, "volseg-triton"),
                         "volseg-triton-full": _method(0.99, 0.97, 16500, False, "volseg-triton-full"),
                         "volseg-torch": _method(1.40, 0.97, 14000, True, "volseg-torch"),
                         "monai": _method(2.00, 0.98, 31000, None, "monai")},
             "agreement_with_volseg_torch": {"volseg-triton": {"equal_labels": 1.0}, "monai": {"equal_labels": 0.99}}}
    demo = {"device": "cuda", "dataset": "ms demo", "config": "3d_fullres", "anatomy": "phantom", "cases": 12,
            "case": "ms_000", "case_shape": [2, 72, 96, 80], "patch": [80, 96, 80], "classes": 4, "mode": "sigmoid",
            "mirror_axes": [0, 1, 2], "skipped": {},
            "results": {"volseg-triton": _method(0.05, 0.04, 900, False, "volseg-triton"),
                        "monai": _method(0.06, 0.04, 950, None, "monai")},
            "agreement_with_volseg_torch": {"monai": {"max_abs_probability_difference": 0.01}},
            "training": {"config": "3d_fullres", "patch": [80, 96, 80], "batch": 2, "iterations": 4, "seconds": 9.0,
                         "train_loss": 1.2, "device": "cuda", "amp": True, "estimate_gb": 2.844,
                         "estimate_without_overhead_gb": 1.844, "max_memory_allocated_gb": 2.2,
                         "max_memory_reserved_gb": 2.6, "dry_run": False}}
    runs = []
    for z, full_ok in ((256, True), (512, False)):
        for mode, ok, slab in (("full", full_ok, False), ("slab", True, True), ("auto", True, z == 512)):
            runs.append({"depth": z, "mode": mode, "accumulator_bytes": 4 * 16 * z * 448 * 448,
                         "auto_expects_slab": z == 512, "ok": ok, "seconds": 0.5, "peak_gb": 3.0,
                         **({"slab_mode": slab} if ok else {"error": "CUDA out of memory"})})
    slab = {"default_budget_bytes": 4 * 2 ** 30, "total_memory_bytes": 150e9, "dry_run": False,
            "scenarios": [{"cap_gib": 6.0, "classes": 16, "yx": 448, "depths": [256, 512], "patch": [128] * 3,
                           "cap_bytes": 6 * 2 ** 30, "runs": runs}]}
    for name, rec in (("env", env), ("bench", bench), ("demo", demo), ("slab", slab)):
        (work / f"{name}.json").write_text(json.dumps(rec))
    (work / "steps.tsv").write_text("setup\tok\t20.0\tenvironment\ntests\tok\t80.0\tgpu-marked tests\n")
    (work / "tests.xml").write_text(
        '<testsuites><testsuite name="pytest" errors="0" failures="1" skipped="1" tests="4" time="80.0">'
        '<testcase classname="tests.gpu.test_cuda_path" name="test_a" time="1"/>'
        '<testcase classname="tests.gpu.test_cuda_path" name="test_b" time="1"/>'
        '<testcase classname="tests.gpu.test_cuda_path" name="test_c" time="1"><failure message="boom"/></testcase>'
        '<testcase classname="tests.gpu.test_cuda_path" name="test_d" time="1"><skipped message="why"/></testcase>'
        '</testsuite></testsuites>')


def test_report_of_a_gpu_run_judges_the_aims(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    _gpu_records(work)
    env = {k: v for k, v in os.environ.items() if k != "CHECK_DEVICE"}
    proc = subprocess.run([sys.executable, str(BENCH), "report", "--work", str(work), "--out", str(out)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["mode"] == "gpu" and res["skipped_parts"] == []
    aims = [a["met"] for a in res["aims"]]
    assert aims == [False, True, True]  # stitching 8% of the network time; 1.9× MONAI's speed; 0.39 of its memory
    md = (out / "results.md").read_text()
    assert md.strip() == proc.stdout.strip()  # what it writes is what it prints
    assert "NVIDIA H200" in md and "CUDA (torch build): 13.0" in md and "Triton 3.6.0" in md
    assert "2 passed, 1 failed" in md and "FAILED tests.gpu.test_cuda_path::test_c: boom" in md
    assert "| 6 GiB | 16 × 512×448×448 |" in md and "| out of memory |" in md and "| yes |" in md
    assert "| 3d_fullres | [80, 96, 80], 2 | 2.844 GB | 1.844 GB | 2.200 GB | 2.600 GB | 1.19 |" in md


@pytest.mark.slow
@pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="needs the virtual environment the tests run in")
@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils' timeout")
def test_cpu_path_runs_and_marks_the_gpu_parts_skipped(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "VOLSEG_VENV": sys.prefix, "CHECK_DEVICE": "cpu", "CHECK_WORK": str(tmp_path / "work")}
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(["bash", str(SCRIPT), str(out), "--quick", "--steps", "setup,env,bench,demo,slab"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
    res = json.loads((out / "results.json").read_text())
    assert res["mode"] == "cpu dry run" and len(res["skipped_parts"]) == 6
    assert {s["step"]: s["status"] for s in res["steps"]} == {
        "setup": "ok", "env": "ok", "tests": "skipped", "bench": "ok", "demo": "ok", "slab": "ok"}
    bench = res["bench"]
    assert set(bench["results"]) == {"volseg-torch", "monai"} and "volseg-triton" in bench["skipped"]
    assert all("total" in r and r["network"] > 0 for r in bench["results"].values())
    assert all("total" in r for r in res["demo"]["results"].values())
    assert res["demo"]["training"]["dry_run"] and "error" not in res["demo"]["training"]
    assert res["slab"]["dry_run"] and all(r["ok"] for sc in res["slab"]["scenarios"] for r in sc["runs"])
    md = (out / "results.md").read_text()
    assert "these GPU parts were **skipped**" in md and "| volseg-triton | skipped: needs a CUDA device |" in md
    assert sorted(p.name for p in out.iterdir()) == ["check.log", "results.json", "results.md"]
