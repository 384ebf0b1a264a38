"""Runs inside nnU-Net v2's own environment (never volseg's): times ``nnUNetPredictor`` on a
folder of cases with a trained-model folder. Called by benchmarks/inference/bench_runtime.py.

Usage: PEER_PYTHON nnunet_predict_folder.py TRAINER_DIR IMAGES_DIR OUT_DIR TTA(0|1) REPEAT

Prints one JSON line: ``total`` (seconds of the fastest run, reading, preprocessing, sliding
window and writing included), ``runs`` (every run's seconds) and ``peak_mb`` (peak resident set).
"""

import json
import sys
import time
from pathlib import Path

import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/
from common import peak_rss_mb  # noqa: E402  (standard library only; volseg is not imported)


def main(trainer: str, images: str, out: str, tta: str, repeat: str) -> None:
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=tta == "1",
                                perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                                allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(trainer, use_folds=(0,), checkpoint_name="checkpoint_final.pth")
    Path(out).mkdir(parents=True, exist_ok=True)
    runs = []
    for _ in range(int(repeat)):
        t0 = time.perf_counter()
        predictor.predict_from_files_sequential(images, out, save_probabilities=False, overwrite=True)
        runs.append(time.perf_counter() - t0)
    print(json.dumps({"total": min(runs), "runs": runs, "peak_mb": peak_rss_mb(), "torch_threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main(*sys.argv[1:6])
