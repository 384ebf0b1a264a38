"""CPU runtimes of the forward pass: parity with torch, fallback, the cached export, features."""

import numpy as np
import pytest
import torch

from volseg.runtime import RuntimeChoice, runtime_installed, select_runtime
from volseg.runtime import select as select_mod
from volseg.runtime.export import cached_onnx, weights_digest

INSTALLED = [r for r in ("openvino", "onnxruntime") if runtime_installed(r)]
needs_runtime = pytest.mark.skipif(not INSTALLED, reason="neither OpenVINO nor ONNX Runtime is installed")
SHAPE = (2, 1, 16, 16, 16)


def _net(seed=0, outputs=3):
    from volseg.networks.unet import UNet

    torch.manual_seed(seed)
    return UNet(in_channels=1, num_outputs=outputs, features_per_stage=[4, 8], kernel_sizes=[[3, 3, 3]] * 2,
                strides=[[1, 1, 1], [2, 2, 2]], n_conv_per_stage=[1, 1], n_conv_per_stage_decoder=[1]).eval()


@needs_runtime
@pytest.mark.parametrize("name", INSTALLED)
def test_runtime_gives_torch_logits_and_labels(tmp_path, name):
    nets = [_net(0), _net(1)]
    folders = [tmp_path / "fold_0", tmp_path / "fold_1"]
    out, choice = select_runtime(nets, folders, SHAPE, name)
    assert choice.runtime == name and choice.precision == "f32" and choice.notice is None
    assert choice.checks[f"{name}-f32"]["passed"] and choice.checks[f"{name}-f32"]["label_agreement"] == 1.0
    x = torch.randn(3, 1, 24, 16, 16)[:, :, :16]  # a batch larger than the export's, not contiguous
    for net, engine in zip(nets, out):
        with torch.inference_mode():
            ref = net(x)
        got = engine(x)
        assert got.shape == ref.shape and got.dtype == torch.float32
        assert torch.allclose(got, ref, atol=1e-4, rtol=1e-3)
        assert torch.equal(engine(x[:1]), got[:1])  # a short batch is padded, then cut back
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "fold_1" / "export").iterdir()) == ["network"]


@needs_runtime
def test_auto_takes_a_runtime_only_when_it_is_faster(tmp_path, monkeypatch):
    nets = [_net()]
    seconds = {"torch": 1.0, "openvino": 0.5, "onnxruntime": 0.99}
    measure = select_mod._seconds

    def timed(net, x, repeats=2):
        return measure(net, x, 1)[0], seconds[getattr(net, "name", "torch")]

    monkeypatch.setattr(select_mod, "_seconds", timed)
    out, choice = select_runtime(nets, [tmp_path], SHAPE, "auto")
    expected = "openvino" if "openvino" in INSTALLED else "torch"  # ONNX Runtime at 0.99 s is not 5% faster
    assert choice.runtime == expected
    assert (out[0] is nets[0]) == (expected == "torch")
    seconds["onnxruntime"] = 0.1
    if "onnxruntime" in INSTALLED:
        assert select_runtime(nets, [tmp_path], SHAPE, "auto")[1].runtime == "onnxruntime"


def test_a_missing_runtime_falls_back_to_torch_with_a_notice(tmp_path, monkeypatch):
    monkeypatch.setattr(select_mod, "runtime_installed", lambda name: name == "torch")
    nets = [_net()]
    out, choice = select_runtime(nets, [tmp_path], SHAPE, "openvino")
    assert out[0] is nets[0] and choice.runtime == "torch"
    assert "openvino is not installed" in choice.notice and "volseg[cpu-fast]" in choice.notice
    out, choice = select_runtime(nets, [tmp_path], SHAPE, "auto")  # auto: silently torch
    assert out[0] is nets[0] and choice.notice is None and list(choice.checks) == ["torch-f32"]


@needs_runtime
def test_a_runtime_that_disagrees_falls_back_to_torch(tmp_path, monkeypatch):
    from volseg.runtime import engines

    real = engines.build_engine

    class Off:
        name = "off"

        def __init__(self, engine):
            self.engine = engine

        def __call__(self, x):
            return self.engine(x) + torch.linspace(0, 1, 3).view(1, 3, 1, 1, 1)  # favours the last class

    monkeypatch.setattr(select_mod, "build_engine", lambda *a, **k: Off(real(*a, **k)))
    nets = [_net()]
    name = INSTALLED[0]
    out, choice = select_runtime(nets, [tmp_path], SHAPE, name)
    assert out[0] is nets[0] and choice.runtime == "torch"
    assert f"{name} f32 disagrees with torch" in choice.notice
    assert not choice.checks[f"{name}-f32"]["passed"]


def test_compare_excuses_label_flips_only_inside_the_tolerance():
    ref = torch.zeros(1, 2, 2, 2, 2)
    ref[:, 0] = 1.0
    ref[0, 1, 0, 0, 0] = 1.0 - 1e-4  # a near tie: a flip there is within float noise
    near = ref.clone()
    near[0, 1, 0, 0, 0] = 1.0 + 1e-4
    c = select_mod.compare([ref], [near])
    assert c["label_agreement"] == pytest.approx(7 / 8) and c["unexplained"] == 0
    assert select_mod._passes(c, "f32")
    far = ref.clone()
    far[0, 1, 1, 1, 1] = 3.0
    c = select_mod.compare([ref], [far])
    assert c["unexplained"] == 1 and not select_mod._passes(c, "f32")
    sig = select_mod.compare([torch.full((1, 1, 2, 2, 2), 0.5)], [torch.full((1, 1, 2, 2, 2), -0.5)], "sigmoid")
    assert sig["label_agreement"] == 0.0 and sig["unexplained"] == 8


@needs_runtime
def test_cached_export_is_reused_and_replaced_when_the_weights_change(tmp_path):
    net = _net()
    first = cached_onnx(net, SHAPE, tmp_path)
    stamp = first.stat().st_mtime_ns
    assert cached_onnx(net, SHAPE, tmp_path) == first and first.stat().st_mtime_ns == stamp
    other_shape = cached_onnx(net, (1, *SHAPE[1:]), tmp_path)
    assert other_shape != first and first.is_file()  # same weights: both shapes kept
    old = weights_digest(net)
    with torch.no_grad():
        next(net.parameters()).add_(1e-3)
    assert weights_digest(net) != old
    new = cached_onnx(net, SHAPE, tmp_path)
    assert new != first and not first.exists() and not other_shape.exists()


@needs_runtime
def test_a_read_only_model_folder_exports_to_a_temporary_folder(tmp_path, monkeypatch):
    from volseg.runtime import export

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    real = export.export_onnx
    calls = []

    def first_refused(net, shape, path):
        calls.append(path)
        return refuse() if len(calls) == 1 else real(net, shape, path)

    monkeypatch.setattr(export, "export_onnx", first_refused)
    path = cached_onnx(_net(), SHAPE, tmp_path / "fold_0")
    assert path.is_file() and tmp_path not in path.parents


@needs_runtime
def test_the_shift_probe_gets_the_runtimes_bottleneck_features(tmp_path):
    from volseg.inference.dense import dense_aggregator
    from volseg.inference.sliding_window import run_sliding_window
    from volseg.shift.features import FeatureProbe

    net = _net(outputs=2)
    image = torch.randn(1, 24, 20, 20)

    def features(nets):
        agg = dense_aggregator(2, image.shape[1:], (16, 16, 16), 0.125, "torch", torch.device("cpu"), "softmax",
                               False, False, False, None, None)
        with FeatureProbe(nets) as probe:
            result, _ = run_sliding_window(nets, image, (16, 16, 16), agg, 0.5, mirror_axes=(0,), tile_batch=2,
                                           probe=probe)
        return probe.features[0], result.labels

    engines, choice = select_runtime([net], [tmp_path], SHAPE, INSTALLED[0])
    assert choice.runtime == INSTALLED[0]
    f_torch, labels_torch = features([net])
    f_rt, labels_rt = features(engines)
    assert f_rt.shape == f_torch.shape == (8, 16)
    assert np.allclose(f_rt, f_torch, atol=1e-4)
    assert torch.equal(labels_rt, labels_torch)
    assert engines[0]._sink is None  # the probe let go


def test_bf16_reports_its_label_agreement(tmp_path):
    nets = [_net()]
    out, choice = select_runtime(nets, [tmp_path], SHAPE, "torch", "bf16")
    check = choice.checks["torch-bf16"]
    assert 0.0 <= check["label_agreement"] <= 1.0 and check["max_abs_diff"] > 0
    assert (choice.precision == "bf16") == (check["label_agreement"] >= select_mod.BF16_MIN_AGREEMENT)
    if choice.precision == "bf16":
        assert "labels" in choice.describe() and out[0] is not nets[0]


def test_other_devices_keep_torch(tmp_path):
    nets = [_net()]
    out, choice = select_runtime(nets, [tmp_path], SHAPE, "openvino", device="meta")
    assert out[0] is nets[0] and "CPU only" in choice.notice
    assert RuntimeChoice(**choice.record()).describe() == "runtime: torch f32"


def test_unknown_runtime_or_precision_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown runtime"):
        select_runtime([_net()], [tmp_path], SHAPE, "tensorrt")
    with pytest.raises(ValueError, match="unknown precision"):
        select_runtime([_net()], [tmp_path], SHAPE, "torch", "int8")


@needs_runtime
def test_retina_unet_outputs_keep_their_structure(tmp_path):
    from volseg.networks import build_network

    torch.manual_seed(0)
    net = build_network("retina_unet", in_channels=1, deep_supervision=False, features_per_stage=[4, 8, 16],
                        kernel_sizes=[[3, 3, 3]] * 3, strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]],
                        n_conv_per_stage=[1, 1, 1], n_conv_per_stage_decoder=[1, 1], detection_levels=[1, 2],
                        num_anchors=3, num_classes=2, head_channels=8, head_convs=1).eval()
    engines, choice = select_runtime([net], [tmp_path], (1, 1, 16, 16, 16), INSTALLED[0])
    assert choice.runtime == INSTALLED[0], choice.checks
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.inference_mode():
        ref = net(x)
    got = engines[0](x)
    assert set(got) == set(ref) and len(got["cls"]) == len(ref["cls"])
    for key in ("cls", "box"):
        for a, b in zip(ref[key], got[key]):
            assert torch.allclose(a, b, atol=1e-4, rtol=1e-3)
