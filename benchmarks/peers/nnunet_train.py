"""Runs inside nnU-Net v2's own environment (never volseg's): times nnUNetTrainer's training
iterations on a preprocessed dataset. Called by benchmarks/train_throughput.py.

Usage: PEER_PYTHON nnunet_throughput.py DATASET_ID ITERATIONS OUT_JSON
(nnUNet_raw / nnUNet_preprocessed / nnUNet_results must be set.)
"""

import json
import sys
import time

import torch
from batchgenerators.utilities.file_and_folder_operations import join, load_json
from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name


def main() -> None:
    dataset_id, iterations, out_json = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    name = maybe_convert_to_dataset_name(int(dataset_id))
    plans = load_json(join(nnUNet_preprocessed, name, "nnUNetPlans.json"))
    dataset_json = load_json(join(nnUNet_preprocessed, name, "dataset.json"))
    plans["continue_training"] = False  # what nnU-Net's own launcher adds
    epochs: list[dict] = []

    class TimedTrainer(nnUNetTrainer):
        def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                     device: torch.device = torch.device("cuda")):  # nnU-Net reads this signature
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_iterations_per_epoch = iterations
            self.num_val_iterations_per_epoch = 2
            self.num_epochs = 2

        def on_train_epoch_start(self):
            super().on_train_epoch_start()
            self._t0 = time.perf_counter()

        def on_train_epoch_end(self, outputs):
            epochs.append({"train_seconds": time.perf_counter() - self._t0})
            super().on_train_epoch_end(outputs)

    trainer = TimedTrainer(plans=plans, configuration="3d_fullres", fold=0, dataset_json=dataset_json,
                           device=torch.device("cpu"))
    trainer.run_training()
    with open(out_json, "w") as f:
        json.dump({"iterations": iterations, "epochs": epochs}, f)


if __name__ == "__main__":
    main()
