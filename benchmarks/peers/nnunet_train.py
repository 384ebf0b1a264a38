"""Runs inside nnU-Net v2's own environment (never volseg's): trains ``nnUNetTrainer`` on the
CPU for a given budget and times each epoch. Called by benchmarks/train_throughput.py and
benchmarks/e2e_vs_nnunet.py.

Usage: PEER_PYTHON nnunet_train.py DATASET_ID EPOCHS ITERATIONS VAL_ITERATIONS OUT_JSON [FOLD]
(nnUNet_raw / nnUNet_preprocessed / nnUNet_results must be set.)

The subclass only changes the budget (epochs, iterations per epoch, validation iterations)
and adds timing; it keeps the class name ``nnUNetTrainer``, so its results folder and
checkpoints are those of the stock trainer and ``nnUNetv2_predict`` loads them unchanged.
The final validation is not run (predicting the held-out fold is timed separately).
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
    dataset_id, out_json = sys.argv[1], sys.argv[5]
    fold = int(sys.argv[6]) if len(sys.argv) > 6 else 0
    epochs, iterations, val_iterations = (int(a) for a in sys.argv[2:5])
    name = maybe_convert_to_dataset_name(int(dataset_id))
    plans = load_json(join(nnUNet_preprocessed, name, "nnUNetPlans.json"))
    dataset_json = load_json(join(nnUNet_preprocessed, name, "dataset.json"))
    plans["continue_training"] = False  # what nnU-Net's own launcher adds
    log: list[dict] = []

    class BudgetTrainer(nnUNetTrainer):
        def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                     device: torch.device = torch.device("cuda")):  # nnU-Net reads this signature
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_iterations_per_epoch = iterations
            self.num_val_iterations_per_epoch = val_iterations
            self.num_epochs = epochs

        def on_train_epoch_start(self):
            super().on_train_epoch_start()
            self._t0 = time.perf_counter()

        def on_train_epoch_end(self, outputs):
            log.append({"train_seconds": time.perf_counter() - self._t0})
            super().on_train_epoch_end(outputs)

    BudgetTrainer.__name__ = BudgetTrainer.__qualname__ = "nnUNetTrainer"
    trainer = BudgetTrainer(plans=plans, configuration="3d_fullres", fold=fold, dataset_json=dataset_json,
                            device=torch.device("cpu"))
    t0 = time.perf_counter()
    trainer.run_training()
    with open(out_json, "w") as f:
        json.dump({"iterations": iterations, "epochs": log, "total_seconds": time.perf_counter() - t0}, f)


if __name__ == "__main__":
    main()
