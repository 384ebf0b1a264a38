import json

import numpy as np
import pytest
from synthetic import ROTATED, blob_case

from volseg.cli.main import main
from volseg.errors import ModelError
from volseg.model import load_model
from volseg.io.nifti import Geometry, read_image, write_image


@pytest.fixture()
def inputs(tmp_path):
    """Three cases on grids unlike the training grid (rotated, anisotropic, odd sizes), one bad file."""
    folder = tmp_path / "in"
    geoms = {"a": Geometry((18, 30, 33), (1.3, 0.9, 1.1), (5.0, -3.0, 20.0), ROTATED),
             "b": Geometry((9, 12, 10), (1.0, 1.0, 1.0)),  # smaller than the patch
             "c": Geometry((16, 32, 32), (1.0, 1.0, 1.0), (1.0, 2.0, 3.0))}
    for i, (name, g) in enumerate(geoms.items()):
        image, _ = blob_case(g.shape, seed=10 + i, n_labels=2)
        write_image(folder / f"{name}_0000.nii.gz", image, g)
    (folder / "zbad_0000.nii.gz").write_bytes(b"\x1f\x8b\x08\x00broken")
    return folder, geoms


def test_outputs_keep_input_geometry_and_bad_case_is_skipped(tiny_model, inputs, tmp_path, capsys):
    folder, geoms = inputs
    out = tmp_path / "out"
    code = main(["predict", "-i", str(folder), "-o", str(out), "-m", str(tiny_model), "--save-probabilities",
                 "--save-uncertainty", "--no-progress"])
    assert code == 1  # one case failed
    printed = capsys.readouterr().out
    assert "3 predicted, 0 skipped, 1 failed" in printed and "zbad_0000.nii.gz" in printed
    for name, g in geoms.items():
        labels, lg = read_image(out / f"{name}.nii.gz")
        assert lg.matches(g) is None and labels.dtype == np.uint8
        assert set(np.unique(labels)) <= {0, 1, 2}
        ent, eg = read_image(out / "maps" / f"{name}_entropy.nii.gz")
        assert eg.matches(g) is None and (ent >= 0).all() and (ent <= np.log(3) + 1e-3).all()
        probs = np.load(out / "maps" / f"{name}_probabilities.npz")["probabilities"]
        assert probs.shape == (3, *g.shape) and probs.dtype == np.float16
        np.testing.assert_allclose(probs.astype(np.float32).sum(0), 1.0, atol=5e-3)
        assert (probs.argmax(0) != labels).mean() < 1e-3  # ties after fp16 rounding
        eh, _ = read_image(out / "maps" / f"{name}_expected_entropy.nii.gz")
        mi, mg = read_image(out / "maps" / f"{name}_mutual_information.nii.gz")
        assert mg.matches(g) is None and (mi >= 0).all() and (eh >= 0).all()
        # two folds × mirrors disagree somewhere: the epistemic part is not zero inside the image
        assert mi.max() > 0 and (eh + mi <= np.log(3) + 2e-2).all()
        conf, cg = read_image(out / "maps" / f"{name}_max_prob.nii.gz")  # the largest class probability
        inside = probs.astype(np.float32).max(0)
        assert cg.matches(g) is None and np.abs(conf - inside).max() < 5e-3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"done": 3, "skipped": 0, "failed": 1, "refused": 0}
    assert summary["folds"] == ["0", "1"]
    unc = summary["cases"]["a"]["uncertainty"]
    assert {"entropy", "expected_entropy", "mutual_information"} <= set(unc) and unc["mutual_information"] >= 0


def test_resume_skips_finished_cases(tiny_model, inputs, tmp_path):
    folder, _ = inputs
    (folder / "zbad_0000.nii.gz").unlink()
    out = tmp_path / "out"
    assert main(["predict", "-i", str(folder), "-o", str(out), "-m", str(tiny_model), "--no-progress"]) == 0
    before = (out / "a.nii.gz").stat().st_mtime_ns
    (out / "b.nii.gz").unlink()  # as if killed before b was written
    assert main(["predict", "-i", str(folder), "-o", str(out), "-m", str(tiny_model), "--resume",
                 "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"done": 1, "skipped": 2, "failed": 0, "refused": 0}
    assert (out / "a.nii.gz").stat().st_mtime_ns == before and (out / "b.nii.gz").is_file()
    whole = (out / "a.nii.gz").read_bytes()
    (out / "a.nii.gz").write_bytes(whole[: len(whole) // 2])  # cut short outside volseg
    assert main(["predict", "-i", str(folder), "-o", str(out), "-m", str(tiny_model), "--resume",
                 "--no-progress"]) == 0
    assert json.loads((out / "summary.json").read_text())["cases"]["a"]["status"] == "done"
    from volseg.io.atomic import output_complete

    assert output_complete(out / "a.nii.gz") and len((out / "a.nii.gz").read_bytes()) > len(whole) // 2


def test_inputs_never_modified(tiny_model, inputs, tmp_path):
    folder, _ = inputs
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    main(["predict", "-i", str(folder), "-o", str(tmp_path / "o"), "-m", str(tiny_model), "--no-progress", "--no-tta"])
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_wrong_channel_count_is_reported(tiny_model, inputs, tmp_path, capsys):
    folder, geoms = inputs
    image, _ = blob_case(geoms["c"].shape, seed=1)
    write_image(folder / "c_0001.nii.gz", image, geoms["c"])
    main(["predict", "-i", str(folder), "-o", str(tmp_path / "o"), "-m", str(tiny_model), "--no-progress"])
    assert "c_0001.nii.gz: unexpected channel 1 of case c" in capsys.readouterr().out


def test_missing_middle_channel_names_the_missing_file(tmp_path):
    """Regression: "channel 1 missing, channel 2 present" was reported as "more channels than the model's 2"."""
    from volseg.errors import DatasetError
    from volseg.inference.cases import InputCase, read_input_case

    case = InputCase("c", (tmp_path / "c_0000.nii.gz", None, tmp_path / "c_0002.nii.gz"))
    with pytest.raises(DatasetError, match=r"c_0001.nii.gz: missing channel 1 of case c"):
        read_input_case(case, 3)
    with pytest.raises(DatasetError, match=r"c_0002.nii.gz: unexpected channel 2 of case c"):
        read_input_case(InputCase("c", (tmp_path / "c_0000.nii.gz", tmp_path / "c_0001.nii.gz",
                                        tmp_path / "c_0002.nii.gz")), 2)


def test_single_folds_and_bad_model(tiny_model, tmp_path):
    assert load_model(tiny_model, ["1"]).folds == ["1"]
    with pytest.raises(ModelError, match="checkpoint not found"):
        load_model(tiny_model, ["4"])
    with pytest.raises(ModelError, match="not a volseg model folder"):
        load_model(tmp_path)


def test_checkpoint_with_non_finite_weights_is_refused(tiny_model, tmp_path):
    """Regression: a model trained to NaN weights predicted all-background maps with exit 0."""
    import shutil

    import torch

    from volseg.errors import ModelError
    from volseg.model import load_checkpoint, save_checkpoint

    model = tmp_path / "m"
    shutil.copytree(tiny_model, model)
    path = model / "fold_0" / "checkpoint_final.pt"
    state = load_checkpoint(path)
    key = next(k for k, v in state["network"].items() if v.is_floating_point())
    state["network"][key] = torch.full_like(state["network"][key], float("nan"))
    save_checkpoint(path, {k: v for k, v in state.items() if k != "format"})
    with pytest.raises(ModelError, match="checkpoint_final.pt: holds non-finite weights"):
        load_model(model, ["0"])


def test_probabilities_in_nnunet_layout(tiny_model, inputs, tmp_path):
    from volseg.conformal.cases import probability_files, read_probabilities

    folder, geoms = inputs
    out = tmp_path / "nn"
    assert main(["predict", "-i", str(folder), "-o", str(out), "-m", str(tiny_model), "--no-progress",
                 "--save-probabilities", "nnunet", "--no-postprocessing", "--runtime", "torch"]) == 1  # zbad fails
    for name, g in geoms.items():
        with np.load(out / f"{name}.npz", allow_pickle=False) as z:
            assert list(z) == ["probabilities"]
            p = z["probabilities"]
        assert p.dtype == np.float16 and p.shape[1:] == g.shape
        np.testing.assert_allclose(p.astype(np.float32).sum(0), 1.0, atol=3e-3)
        labels = read_image(out / f"{name}.nii.gz")[0]
        assert np.mean(p.argmax(0) == labels) > 0.999  # ties aside, the label map is the argmax
    assert not list((out / "maps").glob("*_probabilities.npz")) if (out / "maps").exists() else True
    files = probability_files(out)  # volseg calibrate reads this layout too
    assert sorted(files) == sorted(geoms) and read_probabilities(files["a"]).shape[1:] == geoms["a"].shape


def test_tile_batch_is_the_option_else_the_plan_s_for_the_device():
    import torch

    from volseg.inference.predictor import PredictOptions, tile_batch

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    config = {"inference": {"tile_batch": 4, "tile_batch_cpu": 1}}
    assert (tile_batch(config, PredictOptions(), cpu), tile_batch(config, PredictOptions(), cuda)) == (1, 4)
    assert tile_batch(config, PredictOptions(tile_batch=3), cpu) == tile_batch(config, PredictOptions(tile_batch=3), cuda) == 3
    assert tile_batch({"inference": {"tile_batch": 4}}, PredictOptions(), cpu) == 4  # a plan written before the key
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="tile_batch must be a positive integer"):
            PredictOptions(tile_batch=bad)


def test_tile_batch_option_and_its_error(tiny_model, inputs, tmp_path, capsys):
    folder, _ = inputs
    out = tmp_path / "one"
    assert main(["predict", "-i", str(folder), "-o", str(out), "-m", str(tiny_model), "--tile-batch", "1", "--no-tta",
                 "--no-progress"]) == 1  # the broken case fails, the others are written
    assert (out / "a.nii.gz").is_file() and (out / "c.nii.gz").is_file()
    capsys.readouterr()
    assert main(["predict", "-i", str(folder), "-o", str(tmp_path / "x"), "-m", str(tiny_model), "--tile-batch",
                 "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--tile-batch must be at least 1" in err and "\n" not in err
