"""The model folder: format, weights-only checkpoints and loading for prediction.

Training writes model folders (:func:`prepare_model_folder`, :func:`save_checkpoint`),
inference reads them (:func:`load_model`); this package is all they share.
"""

from volseg.model.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from volseg.model.folder import dataset_root, fold_dir, load_model_record, model_hash, prepare_model_folder
from volseg.model.loading import LoadedModel, available_folds, load_model

__all__ = ["CHECKPOINT_FORMAT", "LoadedModel", "available_folds", "dataset_root", "fold_dir", "load_checkpoint",
           "load_model", "load_model_record", "model_hash", "prepare_model_folder", "save_checkpoint"]
