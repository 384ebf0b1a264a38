"""``volseg train`` option checking (no training runs here)."""

import pytest

from volseg.cli.main import build_parser, main


def _usage_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(["train", "plan_dir", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize("option", ["--epochs", "--iters"])
@pytest.mark.parametrize("value", ["0", "-3", "two", "1.5"])
def test_non_positive_epochs_and_iters_are_usage_errors(option, value, capsys):
    """Regression: --epochs 0 silently ran the plan's epochs and --iters -3 ran no iterations."""
    line = _usage_error([option, value], capsys)
    assert line.startswith("volseg train: error: argument") and option in line and "positive integer" in line


@pytest.mark.parametrize("fold", ["-1", "x", "1,b", ",", "0.5"])
def test_bad_fold_is_a_usage_error(fold, capsys):
    """Regression: --fold -1 exited with status 1, other usage errors with 2."""
    line = _usage_error(["--fold", fold], capsys)
    assert "argument -f/--fold" in line and repr(fold) in line


@pytest.mark.parametrize("argv", [["--time-limit", "0"], ["--time-limit", "nan"], ["-j", "-1"]])
def test_other_bad_numbers_are_usage_errors(argv, capsys):
    assert argv[0] in _usage_error(argv, capsys)


def test_good_options_parse():
    parser = build_parser()
    args = parser.parse_args(["train", "plan_dir", "--fold", "0, 2", "--epochs", "3", "--iters", "1", "-j", "0",
                              "--time-limit", "1.5"])
    assert args.fold == ["0", "2"] and args.epochs == 3 and args.iters == 1 and args.workers == 0
    assert args.time_limit == 1.5
    args = parser.parse_args(["train", "plan_dir"])
    assert args.fold == ["0"] and args.epochs is None and args.iters is None
    assert parser.parse_args(["train", "plan_dir", "-f", "all"]).fold == ["all"]
