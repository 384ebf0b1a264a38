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
