"""Reading and writing NIfTI images for prep/: checked loading, atomic saving.

Every writer here saves to a hidden temporary name beside the target and renames it into place, so an
interrupted step never leaves a half-written file under the final name.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from ..atomic import atomic_path
from ..errors import InputDataError, NoInputError


def load_image(path: str | Path, ndim: int | tuple[int, ...] | None = None, what: str = "image") -> nib.Nifti1Image:
    """Load a NIfTI image; raise naming ``path`` when it is missing, unreadable or of the wrong dimension."""
    path = Path(path)
    if not path.is_file():
        raise NoInputError(f"{path}: {what} not found")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises several types for corrupt files
        raise InputDataError(f"{path}: cannot read the {what} ({exc})") from None
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if len(img.shape) not in allowed:
            raise InputDataError(
                f"{path}: the {what} has {len(img.shape)} dimensions {tuple(img.shape)}, expected {' or '.join(map(str, allowed))}"
            )
    return img


def load_data(img: nib.Nifti1Image, path: str | Path, what: str = "image") -> np.ndarray:
    """Voxel values as float32; raise naming ``path`` when some are NaN or infinite."""
    data = np.asarray(img.dataobj, dtype=np.float32)
    if not np.all(np.isfinite(data)):
        raise InputDataError(f"{path}: the {what} contains NaN or infinite voxels")
    return data


def save_image(data: np.ndarray, affine: np.ndarray, path: str | Path, dtype=np.float32,
               template: nib.Nifti1Image | None = None) -> Path:
    """Write ``data`` with ``affine`` (voxel -> RAS+ mm) as ``dtype``, atomically.

    qform and sform carry the affine (code 1, or the codes of ``template`` when given); spatial units mm.
    Integer types are rounded and clipped to their range; booleans are written as uint8.
    """
    path = Path(path)
    data = np.asarray(data)
    if data.dtype == bool:
        data = data.astype(np.uint8)
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        data = np.clip(np.rint(data.astype(np.float64)), info.min, info.max)
    affine = np.asarray(affine, dtype=np.float64)
    img = nib.Nifti1Image(data.astype(dtype), affine)
    img.header.set_data_dtype(dtype)
    qcode = scode = 1
    if template is not None:
        qcode = int(template.header["qform_code"]) or 1
        scode = int(template.header["sform_code"]) or 1
        if data.ndim == 4 and len(template.shape) == 4:
            img.header.set_zooms(img.header.get_zooms()[:3] + template.header.get_zooms()[3:4])
    img.set_qform(affine, code=qcode)
    img.set_sform(affine, code=scode)
    img.header.set_xyzt_units("mm", "sec")
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    """Voxel sizes (3,) in mm from a voxel -> world affine."""
    return np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))
