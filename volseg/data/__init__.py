"""Training data: preprocessed cases, patch sampling, augmentation, background loading.

    cases (CASE.npy / CASE_seg.npy / CASE.json) ─► PatchSampler (foreground oversampling)
        ─► build_transforms (batchgenerators) ─► BatchLoader (worker processes, wait time)

Public API: :func:`load_case`, :func:`load_cases`, :class:`PatchSampler`,
:func:`default_augmentation`, :func:`build_transforms`, :func:`sample_size`,
:func:`make_loader`, :class:`BatchLoader`.
"""

from volseg.data.augmentation import build_transforms, default_augmentation, sample_size
from volseg.data.cases import Case, load_case, load_cases
from volseg.data.loader import BatchLoader, make_loader
from volseg.data.sampling import PatchSampler, forced_foreground, split_batch

__all__ = ["BatchLoader", "Case", "PatchSampler", "build_transforms", "default_augmentation", "forced_foreground",
           "load_case", "load_cases", "make_loader", "sample_size", "split_batch"]
