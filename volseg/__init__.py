"""volseg: self-configuring 3D medical image segmentation and detection.

Stages (one subpackage each): ``io`` → ``fingerprint`` → ``planning`` →
``preprocessing`` → ``data`` / ``networks`` / ``training`` → ``inference`` →
``postprocessing`` → ``evaluation``.  Arrays are (z, y, x) in voxel order.
"""

__version__ = "0.1.0"
