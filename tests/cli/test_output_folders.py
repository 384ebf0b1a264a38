"""plan, predict and evaluate refuse a bad output folder with one line before doing any work."""

import pytest

from volseg.cli.main import main


@pytest.mark.parametrize("command", ["plan", "predict", "evaluate"])
def test_output_that_is_a_file_or_the_input_is_refused(command, tiny_model, tmp_path, capsys):
    import json
    from pathlib import Path

    data = Path(json.loads((tiny_model / "fingerprint.json").read_text())["dataset"]["root"])
    a_file = tmp_path / "out.txt"
    a_file.write_text("keep me")
    args = {"plan": [str(data), "-o"], "predict": ["-i", str(data / "imagesTr"), "-m", str(tiny_model), "-o"],
            "evaluate": ["--pred", str(data / "labelsTr"), "--ref", str(data / "labelsTr"), "-o"]}[command]
    before = sorted(p.name for p in data.rglob("*"))
    for out, message in ((a_file, "exists and is not a folder"),
                         (data if command == "plan" else data / ("imagesTr" if command == "predict" else "labelsTr"),
                          "is the input folder")):
        capsys.readouterr()
        assert main([command, *args, str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and str(out) in err[0]
    assert a_file.read_text() == "keep me" and sorted(p.name for p in data.rglob("*")) == before


def test_failed_plan_leaves_no_empty_output_folder(tmp_path, capsys):
    """Regression: a plan that failed on a damaged image left an empty output folder."""
    from synthetic import make_dataset

    data = make_dataset(tmp_path / "Dataset010_Bad", n_cases=3, shape=(16, 32, 32), spacing=(1.0, 1.0, 1.0),
                        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), n_labels=2)
    damaged = sorted((data / "imagesTr").glob("*.nii.gz"))[1]
    damaged.write_bytes(damaged.read_bytes()[:200])
    out = tmp_path / "plan"
    assert main(["plan", str(data), "-o", str(out), "--device", "cpu", "-j", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert err.startswith("volseg plan: error:") and damaged.name in err
    assert not out.exists()
