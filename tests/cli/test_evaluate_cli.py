"""``volseg evaluate`` through the command-line entry point."""

import json
import subprocess
import sys

import numpy as np

from volseg.cli.main import main
from volseg.io.nifti import Geometry, write_image

GEOM = Geometry((10, 12, 14), (2.0, 1.0, 1.0))


def _write(root, cases=("a", "b"), skip_pred=()):
    ref = np.zeros(GEOM.shape, np.uint8)
    ref[2:7, 3:9, 3:10] = 1
    ref[4:6, 5:7, 5:7] = 2
    for c in cases:
        write_image(root / "ref" / f"{c}.nii.gz", ref, GEOM)
        if c not in skip_pred:
            write_image(root / "pred" / f"{c}.nii.gz", np.roll(ref, 1, axis=1), GEOM)
    (root / "ds").mkdir()
    (root / "ds" / "dataset.json").write_text(json.dumps(
        {"labels": {"background": 0, "stable": 1, "new": 2}, "task": "longitudinal"}))


def test_evaluate_writes_report_and_exits_zero(tmp_path, capsys):
    _write(tmp_path)
    rc = main(["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"),
               "--dataset", str(tmp_path / "ds"), "--regions", "followup=1,2", "--tolerance-mm", "2",
               "--min-lesion-mm3", "0", "--connectivity", "6", "-j", "1", "--worst", "1", "-o", str(tmp_path / "out")])
    assert rc == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["settings"]["tolerance_mm"] == 2.0
    assert summary["settings"]["lesion_wise"]["connectivity"] == 6
    assert list(summary["labels"]) == ["stable", "new", "followup"]
    assert "followup" in capsys.readouterr().out
    assert (tmp_path / "out" / "cases.csv").is_file() and (tmp_path / "out" / "plots" / "scores.png").is_file()


def test_missing_prediction_gives_status_one_after_writing(tmp_path, capsys):
    _write(tmp_path, skip_pred=("b",))
    rc = main(["evaluate", "--pred", str(tmp_path / "pred"), "--dataset", str(tmp_path / "ds"),
               "--ref", str(tmp_path / "ref"), "--no-lesion-wise", "--no-plots", "-j", "1",
               "-o", str(tmp_path / "out")])
    assert rc == 1
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["missing"]["predictions"] == ["b"] and summary["settings"]["lesion_wise"] is None
    assert summary["labels"]["stable"]["counts"]["missing_predictions"] == 1  # b is in the mean, scored as empty
    assert [c["status"] for c in summary["cases"]] == ["ok", "missing"]
    assert "missing predictions: b" in capsys.readouterr().out


def test_bad_options_are_one_line_errors(tmp_path, capsys):
    _write(tmp_path)
    base = ["evaluate", "--pred", str(tmp_path / "pred"), "-o", str(tmp_path / "out")]
    assert main(base + ["--ref", str(tmp_path / "ref"), "--regions", "followup"]) == 2
    assert main(base) == 2  # neither --ref nor --dataset
    assert main(base + ["--ref", str(tmp_path / "ref"), "--min-overlap", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("volseg evaluate: error:") for line in err)


def test_ref_defaults_to_dataset_labels_and_segmentation_has_no_lesion_metrics(tmp_path):
    _write(tmp_path)
    (tmp_path / "ds" / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "a": 1, "b": 2}}))
    (tmp_path / "ref").rename(tmp_path / "ds" / "labelsTr")
    rc = main(["evaluate", "--pred", str(tmp_path / "pred"), "--dataset", str(tmp_path / "ds"), "--no-plots",
               "-j", "1", "-o", str(tmp_path / "out")])
    assert rc == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["settings"]["lesion_wise"] is None and "lesions" not in summary["labels"]["a"]


def test_cli_module_imports_only_argparse():
    code = ("import sys, volseg.cli.evaluate; "
            "print(sorted(m for m in ('numpy', 'scipy', 'matplotlib', 'volseg.evaluation') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "matplotlib" not in out and "scipy" not in out and "volseg.evaluation" not in out
