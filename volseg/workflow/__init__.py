"""Workflows over training and inference: cross-validation (train a fold, predict its held-out
cases, fit the task's calibrators)."""

from volseg.workflow.crossval import calibrate, train_fold, validate_fold

__all__ = ["calibrate", "train_fold", "validate_fold"]
