"""Training: losses, the training loop and its parts (optimizer, schedule, checkpoints, logs).

Submodules are imported where used so that ``import volseg.training`` stays light:
``volseg.training.losses`` holds the segmentation losses and :func:`build_loss`.
"""
