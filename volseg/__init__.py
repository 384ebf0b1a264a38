"""volseg: self-configuring 3D medical image segmentation and detection.

Stages (one subpackage each): ``io`` → ``fingerprint`` → ``planning`` →
``preprocessing`` → ``data`` / ``networks`` / ``training`` → ``inference`` →
``postprocessing`` → ``evaluation``; ``conformal`` calibrates thresholds with a guarantee.  Arrays are (z, y, x) in voxel order.
"""

__version__ = "0.1.0"

_API = ("demo_data", "plan", "train", "predict", "evaluate", "calibrate")


def __getattr__(name: str):
    """``volseg.plan(...)`` and friends, imported on first use so that ``import volseg`` stays light."""
    if name in _API:
        from volseg import api

        return getattr(api, name)
    raise AttributeError(f"module 'volseg' has no attribute {name!r}")
