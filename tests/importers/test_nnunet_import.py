"""``volseg import-nnunet``: nnU-Net v2 trainer folders (written by ``nnunet_fixture``) → model folders."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from nnunet_fixture import FolderSpec, write_results_folder  # noqa: E402

from volseg.cli.main import main  # noqa: E402
from volseg.errors import ModelError, PlanError  # noqa: E402
from volseg.importers import import_nnunet  # noqa: E402
from volseg.importers.nnunet_checkpoint import ALLOWED_GLOBALS, read_nnunet_checkpoint  # noqa: E402
from volseg.model import load_model  # noqa: E402
from volseg.planning.plans import load_plans  # noqa: E402


def one_line(e: BaseException) -> str:
    text = str(e)
    assert "\n" not in text
    return text


def imported(tmp_path, spec=None, **kwargs):
    folder, nets = write_results_folder(tmp_path / "results", spec)
    out = tmp_path / "model"
    mapped = import_nnunet(folder, out, **kwargs)
    return folder, nets, out, mapped


def image_logits(model_net, original, x: torch.Tensor, forward) -> tuple[torch.Tensor, torch.Tensor]:
    """The imported network on image-order ``x``, the original on nnU-Net's transposed ``x`` (transposed back)."""
    back = [list(forward).index(a) for a in range(3)]
    with torch.no_grad():
        mine = model_net(x)
        theirs = original(x.permute(0, 1, *(2 + a for a in forward)).contiguous())
    return mine, theirs.permute(0, 1, *(2 + b for b in back))


def test_import_plain_unet_computes_the_original_function(tmp_path):
    folder, nets, out, mapped = imported(tmp_path)
    model = load_model(out)
    assert model.config_name == "3d_fullres" and model.folds == ["0"]
    plans = load_plans(out / "plans.json")  # validates against the schema
    cfg = plans["configurations"]["3d_fullres"]
    assert cfg["network"]["architecture"] == "unet"
    assert cfg["inference"] == {"step_fraction": 0.5, "gaussian_sigma_scale": 0.125, "gaussian_center": "half_index",
                                "mirror_axes": [0, 1, 2], "tile_batch": 2,  # nnUNetPredictor's tile weights
                                "tile_batch_cpu": 1}  # one tile at a time on the CPU, as nnUNetPredictor
    assert plans["crop_to_nonzero"] is True
    assert plans["outputs"] == {"mode": "softmax", "num_outputs": 3, "class_values": [0, 1, 2]}
    assert plans["normalization"] == [{"channel": 0, "scheme": "ct", "clip": [-50.0, 300.0], "mean": 80.0, "std": 70.0}]
    x = torch.randn(2, 1, 8, 16, 16)
    mine, theirs = image_logits(model.networks[0], nets[0], x, (0, 1, 2))
    assert torch.equal(mine, theirs)
    record = json.loads((out / "model.json").read_text())["imported_from"]
    assert record["trainer"] == "nnUNetTrainer" and record["plans_name"] == "nnUNetPlans"
    assert record["configuration"] == "3d_fullres" and record["checkpoint"] == "checkpoint_final.pth"
    assert len(record["folds"]["0"]["sha256"]) == 64 and record["folds"]["0"]["epoch"] == 1000
    assert set(record["files"]) == {"plans.json", "dataset.json", "dataset_fingerprint.json"}
    assert sorted(p.name for p in (out / "nnunet").iterdir()) == ["dataset.json", "dataset_fingerprint.json",
                                                                   "plans.json"]


def test_cli_import_then_predict_writes_labels(tmp_path, capsys):
    from volseg.io.nifti import Geometry, read_image, write_image

    folder, _ = write_results_folder(tmp_path / "results", replace(FolderSpec(), folds=(0, 1)))
    out = tmp_path / "model"
    assert main(["import-nnunet", str(folder), "-o", str(out)]) == 0
    assert "folds 0, 1" in capsys.readouterr().out
    images = tmp_path / "images"
    rng = np.random.default_rng(0)
    geometry = Geometry((10, 20, 18), (2.0, 1.0, 1.0))
    write_image(images / "case_0000.nii.gz", (100 + 80 * rng.standard_normal((10, 20, 18))).astype(np.float32), geometry)
    assert main(["predict", "-i", str(images), "-o", str(tmp_path / "pred"), "-m", str(out), "--runtime", "torch",
                 "--no-progress"]) == 0
    labels, geom = read_image(tmp_path / "pred" / "case.nii.gz")
    assert labels.shape == (10, 20, 18) and set(np.unique(labels)) <= {0, 1, 2}
    assert geom.matches(geometry) is None
    assert "shift" not in json.loads((tmp_path / "pred" / "summary.json").read_text())  # no training statistics


def test_shift_reference_from_training_images_turns_the_shift_check_on(tmp_path, capsys):
    """--shift-reference measures the given images and fits each fold's feature reference on them; predict then
    scores both, and names a statistic outside the training range."""
    from volseg.io.nifti import Geometry, write_image

    folder, _ = write_results_folder(tmp_path / "results", replace(FolderSpec(), folds=(0, 1)))
    rng = np.random.default_rng(1)
    geometry = Geometry((10, 20, 18), (2.0, 1.0, 1.0))
    train, new = tmp_path / "imagesTr", tmp_path / "imagesTs"
    for i, where in enumerate((train, train, train, new, new)):
        image = (100 + 80 * rng.standard_normal((10, 20, 18))).astype(np.float32)
        thick = Geometry((10, 20, 18), (5.0, 1.0, 1.0))  # case4: 5 mm slices
        write_image(where / f"case{i}_0000.nii.gz", image, thick if i == 4 else geometry)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["import-nnunet", str(folder), "-o", str(tmp_path / "bad"), "--shift-reference", str(empty),
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{empty}: no .nii/.nii.gz images" in err and "\n" not in err
    assert not (tmp_path / "bad").exists()  # refused before the model folder is written
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "case9_0000.nii.gz").write_bytes(b"not a NIfTI image")
    assert main(["import-nnunet", str(folder), "-o", str(tmp_path / "bad"), "--shift-reference", str(train),
                 str(broken), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "case9_0000.nii.gz" in err and "\n" not in err
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad.import-*"))  # nothing half-written
    out = tmp_path / "model"
    assert main(["import-nnunet", str(folder), "-o", str(out), "--shift-reference", str(train), "--device", "cpu"]) == 0
    assert "fingerprint statistics of 3 case(s) and the feature reference of 2 fold(s)" in capsys.readouterr().out
    assert all((out / f"fold_{k}" / "shift_features.pt").is_file() for k in (0, 1))
    record = json.loads((out / "shift_fingerprint.json").read_text())
    assert sorted(record["cases"]) == ["case0", "case1", "case2"]
    assert record["cases"]["case0"]["spacing z"] == 2.0 and "channel 0 foreground p50" not in record["cases"]["case0"]
    assert main(["predict", "-i", str(new), "-o", str(tmp_path / "pred"), "-m", str(out), "--runtime", "torch",
                 "--no-progress", "--no-tta"]) == 0
    summary = json.loads((tmp_path / "pred" / "summary.json").read_text())
    assert summary["shift"]["scores"] == ["fingerprint", "features", "uncertainty"]
    like, thick_slices = (summary["cases"][c]["shift"] for c in ("case3", "case4"))
    assert np.isfinite(like["scores"]["features"])
    assert [o["statistic"] for o in thick_slices["outside_training_range"]][:1] == ["spacing z"]
    assert "spacing z" not in [o["statistic"] for o in like["outside_training_range"]]
    assert thick_slices["scores"]["fingerprint"] > like["scores"]["fingerprint"]


def test_transpose_forward_is_undone_in_kernels_and_plan(tmp_path):
    """transpose_forward [2, 0, 1]: the imported network on untransposed input = the original on the transposed one."""
    spec = FolderSpec(transpose_forward=[2, 0, 1], kernel_sizes_t=[[3, 1, 3], [3, 3, 3], [3, 3, 3]],
                      strides_t=[[1, 1, 1], [2, 1, 2], [2, 2, 2]], patch_t=[16, 8, 24], spacing_t=[0.7, 3.0, 0.9],
                      mirror_axes_t=(0, 2))
    folder, nets, out, mapped = imported(tmp_path, spec)
    cfg = mapped.plans["configurations"]["3d_fullres"]
    assert cfg["patch_size"] == [8, 24, 16] and cfg["spacing"] == [3.0, 0.9, 0.7]
    assert cfg["network"]["kernel_sizes"][0] == [1, 3, 3] and cfg["network"]["strides"][1] == [1, 2, 2]
    assert cfg["inference"]["mirror_axes"] == [1, 2]  # transposed axes 0 (image x) and 2 (image y)
    model = load_model(out)
    x = torch.randn(1, 1, 8, 24, 16)
    mine, theirs = image_logits(model.networks[0], nets[0], x, (2, 0, 1))
    assert torch.allclose(mine, theirs, atol=1e-5, rtol=0)


def test_residual_encoder_without_conv_bias(tmp_path):
    spec = FolderSpec(network_class="ResidualEncoderUNet", blocks=[1, 2, 2], conv_bias=False)
    folder, nets, out, mapped = imported(tmp_path, spec)
    assert mapped.plans["configurations"]["3d_fullres"]["network"]["architecture"] == "resenc_unet"
    model = load_model(out)
    x = torch.randn(1, 1, 8, 16, 16)
    mine, theirs = image_logits(model.networks[0], nets[0], x, (0, 1, 2))
    assert torch.equal(mine, theirs)
    state = model.networks[0].state_dict()
    assert not state["encoder.stages.1.0.skip.1.0.bias"].any() and not state["decoder.transpconvs.0.bias"].any()


def test_normalization_schemes_are_mapped_or_refused(tmp_path):
    spec = FolderSpec(schemes=["CTNormalization", "ZScoreNormalization", "NoNormalization"],
                      use_mask=[False, True, False], channels={"0": "CT", "1": "T1", "2": "map"})
    _, _, _, mapped = imported(tmp_path / "ok", spec)
    assert [n["scheme"] for n in mapped.plans["normalization"]] == ["ct", "zscore", "none"]
    assert mapped.plans["normalization"][1]["use_nonzero_mask"] is True
    bad = replace(spec, schemes=["CTNormalization", "RescaleTo01Normalization", "NoNormalization"])
    with pytest.raises(PlanError) as e:
        imported(tmp_path / "bad", bad)
    msg = one_line(e.value)
    assert "plans.json" in msg and "RescaleTo01Normalization" in msg and "channel 1" in msg
    assert not (tmp_path / "bad" / "model").exists()


def test_regions_and_their_painting_order(tmp_path):
    spec = FolderSpec(labels={"background": 0, "whole": [1, 2], "core": [2]}, regions_class_order=[1, 2])
    _, _, out, mapped = imported(tmp_path / "ok", spec)
    assert mapped.plans["outputs"] == {"mode": "sigmoid", "num_outputs": 2, "regions": {"whole": [1, 2], "core": [2]},
                                       "regions_class_order": [1, 2]}
    load_model(out)
    smaller_first = replace(spec, labels={"background": 0, "core": [2], "whole": [1, 2]})
    with pytest.raises(PlanError, match="largest to the smallest"):
        imported(tmp_path / "order", smaller_first)
    with pytest.raises(PlanError, match="regions_class_order"):
        imported(tmp_path / "none", replace(spec, regions_class_order=None))


def test_ignore_label_has_no_output(tmp_path):
    spec = FolderSpec(labels={"background": 0, "liver": 1, "tumour": 2, "ignore": 3})
    _, _, _, mapped = imported(tmp_path, spec)
    assert mapped.plans["outputs"]["num_outputs"] == 3 and "ignore" not in mapped.plans["dataset"]["labels"]


def test_no_mirroring_when_the_trainer_allowed_none(tmp_path):
    _, _, _, mapped = imported(tmp_path, FolderSpec(mirror_axes_t=None))
    assert mapped.plans["configurations"]["3d_fullres"]["inference"]["mirror_axes"] == []


def test_best_checkpoint_is_written_as_the_final_one(tmp_path):
    folder, _ = write_results_folder(tmp_path / "results", checkpoint="best")
    with pytest.raises(ModelError, match="try --checkpoint best"):
        import_nnunet(folder, tmp_path / "m1")
    import_nnunet(folder, tmp_path / "m2", checkpoint="best")
    assert (tmp_path / "m2" / "fold_0" / "checkpoint_final.pt").is_file()
    assert json.loads((tmp_path / "m2" / "model.json").read_text())["imported_from"]["checkpoint"] == \
        "checkpoint_best.pth"


def test_missing_plans_json_is_one_line_with_exit_status_2(tmp_path, capsys):
    folder, _ = write_results_folder(tmp_path / "results")
    assert main(["import-nnunet", str(folder.parent), "-o", str(tmp_path / "model")]) == 2  # the dataset folder
    assert "pass one of its trainer folders: nnUNetTrainer__nnUNetPlans__3d_fullres" in capsys.readouterr().err
    (folder / "plans.json").unlink()
    assert main(["import-nnunet", str(folder), "-o", str(tmp_path / "model")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(folder / "plans.json") in err and "file not found" in err
    assert not (tmp_path / "model").exists()


def _rewrite_weights(folder: Path, change) -> Path:
    path = folder / "fold_0" / "checkpoint_final.pth"
    ck = torch.load(path, weights_only=False)
    change(ck["network_weights"])
    torch.save(ck, path)
    return path


def test_shape_mismatch_names_the_checkpoint_and_key(tmp_path):
    folder, _ = write_results_folder(tmp_path / "results")
    key = "decoder.seg_layers.1.weight"
    path = _rewrite_weights(folder, lambda w: w.__setitem__(key, torch.zeros(5, 4, 1, 1, 1)))
    with pytest.raises(ModelError) as e:
        import_nnunet(folder, tmp_path / "model")
    msg = one_line(e.value)
    assert str(path) in msg and key in msg and "[5, 4, 1, 1, 1]" in msg and "[3, 4, 1, 1, 1]" in msg


def test_missing_and_unexpected_keys_are_refused(tmp_path):
    folder, _ = write_results_folder(tmp_path / "results")

    def drop(w):
        for k in [k for k in w if ".stages.1.0.convs.1.norm." in k or ".stages.1.0.convs.1.all_modules.1." in k]:
            del w[k]

    _rewrite_weights(folder, drop)
    with pytest.raises(ModelError, match=r"missing key encoder\.stages\.1\.0\.convs\.1\.norm\.weight and 1 more"):
        import_nnunet(folder, tmp_path / "model")
    folder, _ = write_results_folder(tmp_path / "results2")
    _rewrite_weights(folder, lambda w: w.__setitem__("encoder.stages.0.0.convs.0.norm.running_mean", torch.zeros(4)))
    with pytest.raises(ModelError, match="unexpected key encoder.stages.0.0.convs.0.norm.running_mean"):
        import_nnunet(folder, tmp_path / "model")


def test_differing_aliases_are_refused(tmp_path):
    folder, _ = write_results_folder(tmp_path / "results")
    _rewrite_weights(folder, lambda w: w.__setitem__("decoder.encoder.stages.0.0.convs.0.conv.weight",
                                                     w["encoder.stages.0.0.convs.0.conv.weight"] + 1))
    with pytest.raises(ModelError, match="name the same parameter but hold different values"):
        import_nnunet(folder, tmp_path / "model")


class Hostile:
    """Unpickling this object would run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_hostile_pickle_is_refused_without_running_it(tmp_path, capsys):
    folder, _ = write_results_folder(tmp_path / "results")
    marker = tmp_path / "pwned"
    path = folder / "fold_0" / "checkpoint_final.pth"
    torch.save({"network_weights": {"x": torch.zeros(1)}, "payload": Hostile(marker)}, path)
    with pytest.raises(ModelError) as e:
        read_nnunet_checkpoint(path)
    msg = one_line(e.value)
    assert str(path) in msg and "system" in msg
    assert main(["import-nnunet", str(folder), "-o", str(tmp_path / "model")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(path) in err
    assert not marker.exists() and not (tmp_path / "model").exists()


def test_numpy1_scalars_are_in_the_allow_list(tmp_path):
    """Checkpoints pickled under NumPy 1 name numpy.core.multiarray.scalar; they load too."""
    path = tmp_path / "old.pth"
    torch.save({"network_weights": {"w": torch.ones(2)}, "_best_ema": np.float32(0.5),
                "logging": {"train_losses": [np.float64(0.25)]}, "trainer_name": "nnUNetTrainer",
                "inference_allowed_mirroring_axes": (0, 1, 2)}, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    assert b"numpy._core.multiarray\nscalar" in data
    path.write_bytes(data.replace(b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar"))
    ck = read_nnunet_checkpoint(path)
    assert ck.mirror_axes == (0, 1, 2) and torch.equal(ck.weights["w"], torch.ones(2))
    assert "numpy.core.multiarray.scalar" in ALLOWED_GLOBALS


@pytest.mark.parametrize("change, words", [
    (lambda a: a.update(nonlin_first=True), "nonlin_first"),
    (lambda a: a.update(norm_op_kwargs={"eps": 1e-3, "affine": True}), "eps 0.001"),
    (lambda a: a.update(nonlin="torch.nn.GELU"), "torch.nn.GELU"),
    (lambda a: a.update(nonlin_kwargs={"negative_slope": 0.2}), "negative_slope 0.2"),
    (lambda a: a.update(norm_op="torch.nn.modules.normalization.GroupNorm"), "GroupNorm"),
    (lambda a: a.update(conv_op="torch.nn.modules.conv.Conv2d"), "3D configurations"),
])
def test_architectures_volseg_cannot_represent_are_refused(tmp_path, change, words):
    folder, _ = write_results_folder(tmp_path / "results")
    plans = json.loads((folder / "plans.json").read_text())
    change(plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"])
    (folder / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(PlanError) as e:
        import_nnunet(folder, tmp_path / "model")
    msg = one_line(e.value)
    assert str(folder / "plans.json") in msg and words in msg


CLASS = "dynamic_network_architectures.architectures.unet.PlainConvUNet"


def test_other_network_classes_and_cascades_are_refused(tmp_path):
    folder, _ = write_results_folder(tmp_path / "results")
    plans = json.loads((folder / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["architecture"]["network_class_name"] = "nnunetv2.nets.MedNeXt"
    (folder / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(PlanError, match="network class 'nnunetv2.nets.MedNeXt' cannot be imported"):
        import_nnunet(folder, tmp_path / "model")
    plans["configurations"]["3d_fullres"]["architecture"]["network_class_name"] = CLASS
    plans["configurations"]["3d_base"] = plans["configurations"].pop("3d_fullres")
    plans["configurations"]["3d_fullres"] = {"inherits_from": "3d_base", "previous_stage": "3d_lowres"}
    (folder / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(PlanError, match="cascade stage after '3d_lowres'"):
        import_nnunet(folder, tmp_path / "model")


def test_output_folder_with_files_is_refused(tmp_path):
    folder, _ = write_results_folder(tmp_path / "results")
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ModelError, match="not an empty folder"):
        import_nnunet(folder, out)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_architecture_variants_that_map_by_equivalence():
    from volseg.importers.nnunet_architecture import map_architecture

    legacy = {"UNet_class_name": "PlainConvUNet", "UNet_base_num_features": 32, "unet_max_num_features": 64,
              "n_conv_per_stage_encoder": [2, 2, 2], "n_conv_per_stage_decoder": [2, 2], "patch_size": [16, 32, 32],
              "conv_kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3]],
              "pool_op_kernel_sizes": [[1, 1, 1], [1, 2, 2], [2, 2, 2]]}
    arch = map_architecture(legacy, (0, 1, 2))
    assert arch.network["features_per_stage"] == [32, 64, 64] and arch.conv_bias and arch.norm_affine
    assert arch.network["norm"] == "instance" and arch.network["activation"] == "leaky_relu"
    assert map_architecture(legacy, (0, 1, 2), trainer_name="nnUNetTrainerBN").network["norm"] == "batch"
    modern = {"architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                               "arch_kwargs": {"n_stages": 2, "features_per_stage": 8, "conv_op": "torch.nn.Conv3d",
                                               "kernel_sizes": 3, "strides": [1, 2], "n_conv_per_stage": 2,
                                               "n_conv_per_stage_decoder": 1, "norm_op": "torch.nn.InstanceNorm3d",
                                               "norm_op_kwargs": {"eps": 1e-5}, "dropout_op": "torch.nn.Dropout3d",
                                               "dropout_op_kwargs": {"p": 0.2}, "nonlin": "torch.nn.ReLU",
                                               "nonlin_kwargs": {"inplace": True}}}}
    arch = map_architecture(modern, (0, 1, 2))
    assert arch.network["kernel_sizes"] == [[3, 3, 3]] * 2 and arch.network["strides"] == [[1, 1, 1], [2, 2, 2]]
    assert arch.network["features_per_stage"] == [8, 8] and arch.network["activation"] == "relu"
    assert not arch.conv_bias and not arch.norm_affine  # torch's defaults: no bias in nnU-Net's convs, affine off
    assert any("Dropout3d" in n for n in arch.notes)


def test_requested_fold_without_checkpoint(tmp_path):
    folder, _ = write_results_folder(tmp_path / "results")
    with pytest.raises(ModelError, match=r"fold_3/checkpoint_final\.pth: checkpoint not found"):
        import_nnunet(folder, tmp_path / "model", folds=[3])
