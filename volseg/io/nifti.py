"""NIfTI reading and writing with exact geometry.

Arrays are (z, y, x), as ``SimpleITK.GetArrayFromImage`` returns them. ``spacing``
follows the array: (z, y, x) in mm. ``origin`` (x, y, z in mm, world/LPS as ITK
defines it) and ``direction`` (3×3 row-major, columns are the world directions of
the i=x, j=y, k=z voxel axes) are kept as ITK stores them, so a round trip through
:func:`read_image` / :func:`write_image` is exact.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from volseg.errors import DatasetError
from volseg.io.atomic import atomic_path

NIFTI_ENDINGS = (".nii.gz", ".nii")


@dataclass(frozen=True)
class Geometry:
    """Where a (z, y, x) voxel grid lies in the world.

    Attributes:
        shape: Array shape (z, y, x).
        spacing: Voxel size in mm, (z, y, x).
        origin: World position (x, y, z) in mm of voxel (0, 0, 0).
        direction: 3×3 direction cosines, row-major, ITK convention.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = field(default=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))

    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "spacing": list(self.spacing),
                "origin": list(self.origin), "direction": list(self.direction)}

    @classmethod
    def from_dict(cls, d: dict) -> "Geometry":
        return cls(tuple(int(v) for v in d["shape"]), tuple(float(v) for v in d["spacing"]),
                   tuple(float(v) for v in d["origin"]), tuple(float(v) for v in d["direction"]))

    def matches(self, other: "Geometry", rtol: float = 1e-4, atol: float = 1e-4) -> str | None:
        """Return ``None`` when both grids agree, else a short description of the difference."""
        if tuple(self.shape) != tuple(other.shape):
            return f"shape {tuple(other.shape)} differs from {tuple(self.shape)}"
        for name in ("spacing", "origin", "direction"):
            a, b = np.asarray(getattr(self, name)), np.asarray(getattr(other, name))
            if not np.allclose(a, b, rtol=rtol, atol=atol):
                return (f"{name} {tuple(float(x) for x in np.round(b, 5))} differs from "
                        f"{tuple(float(x) for x in np.round(a, 5))}")
        return None

    def voxel_to_world(self, zyx: np.ndarray) -> np.ndarray:
        """Map continuous voxel indices (N, 3) in (z, y, x) to world points (N, 3) in (x, y, z) mm."""
        from volseg.io.world import voxel_to_world

        return voxel_to_world(np.atleast_2d(np.asarray(zyx, dtype=np.float64)), self)

    def world_to_voxel(self, xyz: np.ndarray) -> np.ndarray:
        """Map world points (N, 3) in (x, y, z) mm to continuous voxel indices (N, 3) in (z, y, x)."""
        from volseg.io.world import world_to_voxel

        return world_to_voxel(np.atleast_2d(np.asarray(xyz, dtype=np.float64)), self)


def geometry_of(image: sitk.Image) -> Geometry:
    """Geometry of a 3D SimpleITK image."""
    size = image.GetSize()
    return Geometry(tuple(int(s) for s in size[::-1]), tuple(float(s) for s in image.GetSpacing()[::-1]),
                    tuple(float(o) for o in image.GetOrigin()), tuple(float(d) for d in image.GetDirection()))


def has_nifti_ending(path: str | os.PathLike) -> bool:
    return str(path).endswith(NIFTI_ENDINGS)


def read_geometry(path: str | os.PathLike) -> Geometry:
    """Read only the header of a 3D image and return its geometry."""
    path = Path(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise DatasetError(path, f"cannot read image header ({_first_line(e)})") from None
    check_real(path, reader.GetPixelID())
    dim = reader.GetDimension()
    size = reader.GetSize()
    if dim != 3 and not (dim == 4 and size[3] == 1):
        raise DatasetError(path, f"expected a 3D image, got {dim}D of size {tuple(size)}")
    spacing, origin = reader.GetSpacing()[:3], reader.GetOrigin()[:3]
    d = np.asarray(reader.GetDirection()).reshape(dim, dim)[:3, :3]
    return Geometry(tuple(int(s) for s in size[:3][::-1]), tuple(float(s) for s in spacing[::-1]),
                    tuple(float(o) for o in origin), tuple(float(v) for v in d.ravel()))


def read_image(path: str | os.PathLike, dtype: np.dtype | None = None,
               check_finite: bool = True) -> tuple[np.ndarray, Geometry]:
    """Read a 3D NIfTI (or any ITK format) image.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        dtype: Cast the array to this dtype (default: keep the stored type).
        check_finite: Raise when a floating-point image holds NaN or Inf.

    Returns:
        ``(array, geometry)`` with ``array`` of shape (z, y, x).

    Raises:
        DatasetError: The file is missing, corrupt or truncated, not 3D, complex-valued,
            or holds NaN/Inf.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, "file not found")
    check_nifti_complete(path)
    if check_finite:
        check_nifti_finite(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise DatasetError(path, f"cannot read image, the file is corrupt or truncated ({_first_line(e)})") from None
    check_real(path, image.GetPixelID())
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise DatasetError(path, f"expected a scalar image, got {image.GetNumberOfComponentsPerPixel()} components per voxel")
    dim = image.GetDimension()
    if dim == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    elif dim != 3:
        raise DatasetError(path, f"expected a 3D image, got {dim}D of size {tuple(image.GetSize())}")
    try:
        array = sitk.GetArrayFromImage(image)
    except RuntimeError as e:  # truncated payloads sometimes fail only here
        raise DatasetError(path, f"cannot read image data, the file is corrupt or truncated ({_first_line(e)})") from None
    if check_finite and np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        n = int((~np.isfinite(array)).sum())  # other ITK formats keep NaN; NIfTI is checked above
        raise DatasetError(path, f"image holds {n} NaN or Inf voxels")
    if dtype is not None:
        array = array.astype(dtype, copy=False)
    return array, geometry_of(image)


def read_channels(paths: list[Path] | tuple[Path, ...]) -> tuple[np.ndarray, Geometry]:
    """Read the channel files of one case, which must share one grid.

    Returns:
        ``(images, geometry)``: float32 (C, Z, Y, X) and the geometry of the first file.

    Raises:
        DatasetError: A file is unreadable or its geometry differs from the first file's.
    """
    arrays, geometry = [], None
    for path in paths:
        array, geom = read_image(path, dtype=np.float32)
        if geometry is None:
            geometry = geom
        elif (diff := geometry.matches(geom)) is not None:
            raise DatasetError(path, f"channel geometry differs from {Path(paths[0]).name}: {diff}")
        arrays.append(array)
    return np.stack(arrays), geometry


_COMPLEX_PIXEL_IDS = (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64)


def check_real(path: str | os.PathLike, pixel_id: int) -> None:
    """Raise when an image stores complex voxels (casting them to float would drop the imaginary part)."""
    if pixel_id in _COMPLEX_PIXEL_IDS:
        raise DatasetError(path, f"expected a real-valued image, got complex voxels "
                           f"({sitk.GetPixelIDValueAsString(pixel_id)}); save the magnitude or the real part")


def check_nifti_complete(path: str | os.PathLike) -> None:
    """Raise when a NIfTI file is shorter than its header says.

    ITK reads a truncated ``.nii.gz`` without complaint and fills the missing voxels
    with whatever is in memory, so the length is checked here: the header gives the
    payload size, the gzip trailer the decompressed size (checked by a full
    decompression only when the two disagree, which also covers multi-member files).
    """
    path = Path(path)
    name = path.name
    if not name.endswith(NIFTI_ENDINGS):
        return
    import nibabel as nib  # header only; nibabel reads no voxel data here

    try:
        header = nib.load(str(path)).header
        n_vox = int(np.prod([int(v) for v in header.get_data_shape()], dtype=np.int64))
        expected = int(header.get_data_offset()) + n_vox * int(header.get_data_dtype().itemsize)
    except Exception as e:  # nibabel raises many types for broken headers
        raise DatasetError(path, f"cannot read NIfTI header, the file is corrupt or truncated ({e})") from None
    if name.endswith(".nii"):
        size = path.stat().st_size
        if size < expected:
            raise DatasetError(path, f"file is truncated: {size} bytes, header needs {expected}")
        return
    with open(path, "rb") as f:
        f.seek(-4, os.SEEK_END)
        isize = int.from_bytes(f.read(4), "little")
    if isize == expected % (1 << 32):
        return
    import gzip
    import zlib

    total = 0
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                total += len(chunk)
    except (EOFError, OSError, zlib.error) as e:
        raise DatasetError(path, f"gzip stream is truncated or corrupt ({e})") from None
    if total < expected:
        raise DatasetError(path, f"file is truncated: {total} bytes uncompressed, header needs {expected}")


def check_nifti_finite(path: str | os.PathLike) -> None:
    """Raise when a floating-point NIfTI holds NaN or Inf voxels.

    ITK's NIfTI reader replaces NaN by 0 without a word, so the stored voxels are read
    with nibabel (only for floating-point files) and counted.
    """
    path = Path(path)
    if not path.name.endswith(NIFTI_ENDINGS):
        return
    import nibabel as nib

    img = nib.load(str(path))
    if not np.issubdtype(img.header.get_data_dtype(), np.floating):
        return
    raw = np.asanyarray(img.dataobj)
    bad = int(raw.size - np.count_nonzero(np.isfinite(raw)))
    if bad:
        raise DatasetError(path, f"image holds {bad} NaN or Inf voxels")


def to_sitk(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    """Wrap a (z, y, x) array as a SimpleITK image with ``geometry``."""
    if tuple(array.shape) != tuple(geometry.shape):
        raise ValueError(f"array shape {array.shape} does not match geometry shape {geometry.shape}")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if array.dtype == np.float16:
        array = array.astype(np.float32)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(tuple(float(s) for s in geometry.spacing[::-1]))
    image.SetOrigin(tuple(float(o) for o in geometry.origin))
    image.SetDirection(tuple(float(d) for d in geometry.direction))
    return image


def write_image(path: str | os.PathLike, array: np.ndarray, geometry: Geometry, compress: bool = True) -> Path:
    """Write a (z, y, x) array as NIfTI with ``geometry``, atomically.

    The file appears under ``path`` only once it is complete.
    """
    path = Path(path)
    image = to_sitk(array, geometry)
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=compress and str(path).endswith(".gz"))
    return path


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    # ITK messages start with a location line; the description is more useful.
    for ln in lines:
        if ln.lower().startswith("description:"):
            return ln.split(":", 1)[1].strip()
    return lines[-1] if lines else type(e).__name__
