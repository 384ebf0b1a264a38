"""Reading and writing volumes and datasets with exact geometry."""

from volseg.io.atomic import atomic_path, save_npy, write_json, write_text
from volseg.io.nifti import Geometry, read_geometry, read_image, write_image

__all__ = ["Geometry", "atomic_path", "read_geometry", "read_image", "save_npy", "write_image",
           "write_json", "write_text"]
