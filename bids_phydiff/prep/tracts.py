"""Tract atlases (XTRACT or a phantom's) as per-voxel tract probabilities on a target grid.

Two forms are accepted: a 4D probability map ``(X, Y, Z, K)`` with values in [0, 1] (FSL's
``xtract-tract-atlases-prob-1mm.nii.gz``), or a 3D label map with labels 1..K and 0 for none (the
max-probability form). Either is resampled to the target grid with linear interpolation of the
per-tract channels, so a label map becomes partial-volume probabilities at coarser resolutions.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InputDataError, NoInputError

XTRACT_TRACTS = 42
FSL_XTRACT_PROB = Path("data", "atlases", "XTRACT", "xtract-tract-atlases-prob-1mm.nii.gz")


def default_xtract_path() -> Path:
    """``$FSLDIR/data/atlases/XTRACT/xtract-tract-atlases-prob-1mm.nii.gz``, if FSL is installed."""
    fsldir = os.environ.get("FSLDIR")
    if not fsldir:
        raise NoInputError("no --xtract-atlas given and FSLDIR is not set: cannot find the XTRACT atlas")
    path = Path(fsldir) / FSL_XTRACT_PROB
    if not path.is_file():
        raise NoInputError(f"{path}: the XTRACT atlas is not in this FSL installation")
    return path


def to_channels(data: np.ndarray, n_tracts: int | None = None, source: str = "atlas") -> np.ndarray:
    """Probabilities ``(X, Y, Z, K)`` float32 from a 4D probability map or a 3D label map."""
    data = np.asarray(data)
    if data.ndim == 4:
        probs = data.astype(np.float32)
        if probs.min() < -1e-6:
            raise InputDataError(f"{source}: negative tract probabilities")
        if probs.max() > 1.0 + 1e-6:  # some atlases store percentages
            probs = probs / probs.max()
        return probs
    if data.ndim != 3:
        raise InputDataError(f"{source}: a tract atlas must be 3D labels or 4D probabilities, got {data.ndim}D")
    labels = np.rint(data).astype(np.int32)
    if labels.min() < 0:
        raise InputDataError(f"{source}: negative labels")
    k = n_tracts or int(labels.max())
    if labels.max() > k:
        raise InputDataError(f"{source}: label {labels.max()} exceeds the {k} tracts expected")
    probs = np.zeros(labels.shape + (k,), dtype=np.float32)
    for index in range(1, k + 1):
        probs[..., index - 1] = labels == index
    return probs


def resample_channels(probs: np.ndarray, source_affine: np.ndarray, target_shape: tuple[int, int, int],
                      target_affine: np.ndarray) -> np.ndarray:
    """Linear resampling of each channel of ``probs`` ``(X, Y, Z, K)`` onto a target grid (world = RAS mm)."""
    from scipy.ndimage import affine_transform

    # target voxel -> source voxel
    mapping = np.linalg.inv(source_affine) @ target_affine
    out = np.empty(tuple(target_shape) + (probs.shape[3],), dtype=np.float32)
    for k in range(probs.shape[3]):
        out[..., k] = affine_transform(
            probs[..., k], mapping[:3, :3], offset=mapping[:3, 3], output_shape=tuple(target_shape),
            order=1, mode="constant", cval=0.0,
        )
    return np.clip(out, 0.0, 1.0)


def load_tract_atlas(path: str | Path, target_shape: tuple[int, int, int], target_affine: np.ndarray,
                     n_tracts: int | None = None) -> np.ndarray:
    """Read a tract atlas file and return ``(X, Y, Z, K)`` probabilities on the target grid."""
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise NoInputError(f"{path}: tract atlas not found")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise InputDataError(f"{path}: cannot read the tract atlas ({exc})") from None
    probs = to_channels(data, n_tracts, str(path))
    return resample_channels(probs, img.affine, target_shape, target_affine)
