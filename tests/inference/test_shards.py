"""Prediction split over ranks: --shard K/N and torchrun, split by size, merged summary, resume."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from synthetic import blob_case

from volseg.cli.main import main
from volseg.errors import VolsegError
from volseg.inference.shards import Shard, parse_shard, shard_from_env, split_by_cost
from volseg.io.nifti import Geometry, read_image, write_image


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Five cases of different sizes, one unreadable."""
    folder = tmp_path_factory.mktemp("cohort") / "in"
    shapes = {"a": (20, 34, 30), "b": (10, 16, 16), "c": (16, 32, 32), "d": (12, 20, 24), "e": (18, 24, 40)}
    for i, (name, shape) in enumerate(shapes.items()):
        image, _ = blob_case(shape, seed=20 + i, n_labels=2)
        write_image(folder / f"{name}_0000.nii.gz", image, Geometry(shape, (1.0, 1.0, 1.0)))
    (folder / "zbad_0000.nii.gz").write_bytes(b"\x1f\x8b\x08\x00broken")
    return folder


def _predict(model, folder, out, *extra):
    return main(["predict", "-i", str(folder), "-o", str(out), "-m", str(model), "--no-progress", "--no-tta",
                 "--runtime", "torch", *extra])


def test_parse_and_environment():
    assert parse_shard("1/3") == Shard(1, 3) and Shard(1, 3).summary_file == "summary.shard-1-of-3.json"
    for bad in ("3/3", "-1/2", "1", "a/b", "1/0"):
        with pytest.raises(ValueError, match="K/N"):
            parse_shard(bad)
    assert shard_from_env({}) is None and shard_from_env({"WORLD_SIZE": "1", "RANK": "0"}) is None
    assert shard_from_env({"WORLD_SIZE": "4", "RANK": "3"}) == Shard(3, 4)
    with pytest.raises(VolsegError, match="RANK"):
        shard_from_env({"WORLD_SIZE": "2", "RANK": "2"})


def test_split_balances_the_work_and_is_deterministic():
    costs = [100, 1, 1, 1, 50, 49, 2]
    parts = split_by_cost(costs, 2)
    assert sorted(i for p in parts for i in p) == list(range(len(costs)))
    loads = [sum(costs[i] for i in p) for p in parts]
    assert max(loads) - min(loads) <= 2 and parts == split_by_cost(costs, 2)
    assert split_by_cost([], 3) == [[], [], []] and split_by_cost([1.0], 3) == [[0], [], []]


def test_two_shards_predict_every_case_once_and_merge(tiny_model, cohort, tmp_path, capsys):
    whole, out = tmp_path / "whole", tmp_path / "sharded"
    assert _predict(tiny_model, cohort, whole) == 1  # the broken case fails
    assert _predict(tiny_model, cohort, out, "--shard", "1/2") in (0, 1)
    assert not (out / "summary.json").exists()  # shard 0 has not run yet
    first = json.loads((out / "summary.shard-1-of-2.json").read_text())
    capsys.readouterr()
    assert _predict(tiny_model, cohort, out, "--shard", "0/2") in (0, 1)
    assert "every shard is done" in capsys.readouterr().out
    second = json.loads((out / "summary.shard-0-of-2.json").read_text())
    mine = [set(first["shard"]["cases"]), set(second["shard"]["cases"])]
    assert not mine[0] & mine[1] and mine[0] | mine[1] == {"a", "b", "c", "d", "e", "zbad"}
    assert all(set(s["cases"]) == m for s, m in zip((first, second), mine))  # a rank lists only its cases
    merged = json.loads((out / "summary.json").read_text())
    reference = json.loads((whole / "summary.json").read_text())
    assert set(merged["cases"]) == set(reference["cases"]) and merged["counts"] == reference["counts"]
    assert set(merged["shards"]) == {"0-of-2", "1-of-2"}
    for case in "abcde":
        a = read_image(whole / f"{case}.nii.gz")[0]
        b = read_image(out / f"{case}.nii.gz")[0]
        assert np.array_equal(a, b), case


def test_a_rank_resumes_its_own_cases(tiny_model, cohort, tmp_path):
    out = tmp_path / "o"
    for k in (0, 1):
        _predict(tiny_model, cohort, out, "--shard", f"{k}/2")
    mine = json.loads((out / "summary.shard-1-of-2.json").read_text())["shard"]["cases"]
    lost = next(c for c in mine if c != "zbad")
    (out / f"{lost}.nii.gz").unlink()
    _predict(tiny_model, cohort, out, "--shard", "1/2", "--resume")
    again = json.loads((out / "summary.shard-1-of-2.json").read_text())
    assert again["cases"][lost]["status"] == "done" and (out / f"{lost}.nii.gz").is_file()
    assert all(again["cases"][c]["status"] == "skipped" for c in mine if c not in (lost, "zbad"))
    merged = json.loads((out / "summary.json").read_text())
    assert merged["cases"][lost]["status"] == "done"


def test_torchrun_two_ranks(tiny_model, cohort, tmp_path, free_port):
    out = tmp_path / "tr"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(free_port), "-m", "volseg", "predict", "-i", str(cohort),
                           "-o", str(out), "-m", str(tiny_model), "--no-progress", "--no-tta", "--runtime", "torch"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 0  # the broken case fails on its rank, and torchrun reports it
    assert (out / "summary.shard-0-of-2.json").is_file() and (out / "summary.shard-1-of-2.json").is_file()
    merged = json.loads((out / "summary.json").read_text())
    assert merged["counts"] == {"done": 5, "skipped": 0, "failed": 1, "refused": 0}
    assert all((out / f"{c}.nii.gz").is_file() for c in "abcde")


def test_shards_write_both_folders_with_calibrated_out(tiny_model, cohort, tmp_path):
    """With --calibrated-out, each rank writes its cases to both folders; the last merges both summaries."""
    cal = tmp_path / "calibration.json"
    cal.write_text(json.dumps({"format": "volseg-calibration", "version": 1, "method": "crc", "risk": "voxel_fnr",
                               "alpha": 0.5, "n": 4, "thresholds": {"all": 0.3}, "guarantee": "a test record"}))
    out, cal_out = tmp_path / "plain", tmp_path / "calibrated"
    for k in (0, 1):
        _predict(tiny_model, cohort, out, "--shard", f"{k}/2", "--calibrated-out", str(cal_out),
                 "--calibration", str(cal))
    for folder in (out, cal_out):
        merged = json.loads((folder / "summary.json").read_text())
        assert merged["counts"]["done"] == 5 and all((folder / f"{c}.nii.gz").is_file() for c in "abcde")
    assert json.loads((cal_out / "summary.json").read_text())["calibration"]["thresholds"] == {"all": 0.3}
