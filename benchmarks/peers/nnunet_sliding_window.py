"""Runs inside nnU-Net v2's own environment (never volseg's): times nnU-Net's sliding-window
predictor on a random volume with a network of the benchmark's topology. Called by
benchmarks/inference/bench_sliding_window.py.

Usage: PEER_PYTHON nnunet_sliding_window.py '{"size": [...], "patch": [...], "classes": 4,
    "tta": false, "repeat": 2, "device": "cpu"}'

Prints one JSON line: total and network seconds of the fastest run, peak memory (MB), the
resident set before the runs (MB, after the imports), and the label sum (a checksum). The
network is nnU-Net's own ``PlainConvUNet`` with the same stages, features, kernels, strides,
instance norm and leaky ReLU as volseg's benchmark network, so each forward pass costs the
same; its weights are its own random ones.
nnU-Net predicts one tile at a time (it has no tile batch).
"""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "inference"))
# torch only; volseg is not imported
from bench_sliding_window import Timed, best_of, reset_peak_rss, rss_mb  # noqa: E402


def main() -> None:
    a = json.loads(sys.argv[1])
    device = torch.device(a["device"])
    torch.manual_seed(0)
    net = PlainConvUNet(1, 5, [16, 32, 64, 128, 256], torch.nn.Conv3d, [[3, 3, 3]] * 5,
                        [[1, 1, 1]] + [[2, 2, 2]] * 4, [2] * 5, a["classes"], [2] * 4, conv_bias=True,
                        norm_op=torch.nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                        nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=False)
    net = net.to(device).eval()
    torch.manual_seed(1)
    image = torch.randn(1, *a["size"])
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=a["tta"],
                                perform_everything_on_device=device.type == "cuda", device=device,
                                verbose=False, allow_tqdm=False)
    predictor.configuration_manager = SimpleNamespace(patch_size=list(a["patch"]))
    predictor.label_manager = SimpleNamespace(num_segmentation_heads=a["classes"])
    predictor.allowed_mirroring_axes = (0, 1, 2)

    def predict(timed: Timed) -> torch.Tensor:
        predictor.network = timed
        logits = predictor.predict_sliding_window_return_logits(image)
        return torch.softmax(logits.float(), 0).argmax(0).to(torch.uint8).cpu()

    reset_peak_rss()
    baseline = rss_mb()  # after nnU-Net's imports and set-up, as for volseg's and MONAI's processes
    best = best_of(a["repeat"], device, net, predict)
    best["baseline_mb"] = baseline
    print(json.dumps(best))


if __name__ == "__main__":
    main()
