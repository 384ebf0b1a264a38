"""volseg export: one ONNX file per fold, torch's logits under ONNX Runtime, metadata, the README recipe."""

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from volseg.cli.main import main

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
README = Path(__file__).resolve().parents[2] / "README.md"


def _meta(session):
    return {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}


@pytest.fixture(scope="module")
def exported(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "onnx"
    assert main(["export", str(tiny_model), "-o", str(out)]) == 0
    return out


def test_one_file_per_fold_gives_torchs_logits(tiny_model, exported):
    from volseg.model import load_model

    model = load_model(tiny_model)
    files = sorted(exported.glob("*.onnx"))
    assert [f.name for f in files] == [f"{model.config_name}_fold_{k}.onnx" for k in model.folds]
    x = torch.randn(3, model.num_channels, *model.config["patch_size"])  # N is free
    for path, net in zip(files, model.networks):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [o.name for o in session.get_outputs()] == ["logits"]
        got = session.run(["logits"], {"image": x.numpy()})[0]
        with torch.no_grad():
            ref = net(x).numpy()
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-3)


def test_metadata_describes_input_and_output(tiny_model, exported):
    from volseg.model import load_model
    from volseg.runtime.export import weights_digest

    model = load_model(tiny_model, ["1"])
    path = exported / f"{model.config_name}_fold_1.onnx"
    meta = _meta(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]))
    assert meta["volseg_format"] == "volseg-onnx/1" and meta["fold"] == "1"
    assert meta["input_shape"] == ["N", model.num_channels, *model.config["patch_size"]]
    assert meta["spacing_mm"] == model.config["spacing"] and meta["labels"] == model.plans["dataset"]["labels"]
    assert meta["normalization"] == model.plans["normalization"] and meta["outputs"] == model.plans["outputs"]
    assert meta["inference"] == model.config["inference"] and meta["output_names"] == ["logits"]
    assert meta["weights_sha256"] == weights_digest(model.networks[0])


def test_the_readme_recipe_gives_volsegs_preprocessing_and_logits(tiny_model, exported, tmp_path):
    """The README's stand-alone code, run on a case at the model's spacing, gives the logits of
    volseg's own preprocessing and network on the same first tile."""
    from synthetic import blob_case

    from volseg.io.nifti import Geometry, read_channels, write_image
    from volseg.model import load_model
    from volseg.preprocessing.case import preprocess_image

    text = README.read_text()
    section = text[text.index("### `volseg export`"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    model = load_model(tiny_model, ["0"])
    image, _ = blob_case((14, 30, 26), seed=5, n_labels=2, ct=False)
    image = np.pad(image, 3)  # a zero border: the recipe crops it as volseg does
    geometry = Geometry(image.shape, tuple(model.config["spacing"]), (1.0, 2.0, 3.0))
    images = []
    for c in range(model.num_channels):
        images.append(write_image(tmp_path / f"case_{c:04d}.nii.gz", image * (1 + 0.5 * c), geometry))
    (tmp_path / "export").mkdir()
    shutil.copy(exported / f"{model.config_name}_fold_0.onnx", tmp_path / "export" / "3d_cpu_fold_0.onnx")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        scope: dict = {}
        exec(compile(code, "README.md", "exec"), scope)
    finally:
        os.chdir(cwd)
    arrays, geometry = read_channels(images)
    data, _ = preprocess_image(arrays.astype(np.float32), geometry, model.plans, model.config)
    patch = model.config["patch_size"]
    pad = [(0, 0)] + [(0, max(0, p - s)) for p, s in zip(patch, data.shape[1:])]
    tile = torch.from_numpy(np.pad(data, pad)[None, :, :patch[0], :patch[1], :patch[2]].astype(np.float32))
    with torch.no_grad():
        ref = model.networks[0](tile).numpy()
    np.testing.assert_allclose(scope["logits"], ref, atol=1e-4, rtol=1e-3)
    assert scope["labels"].shape == tuple(patch)


def test_export_errors_are_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nowhere"), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
