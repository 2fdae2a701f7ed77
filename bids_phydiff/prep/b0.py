"""The b0 reference of a DWI run: the mean of its volumes with b <= the b0 threshold."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import InputDataError
from .gradients import B0_THRESHOLD, read_bvals
from .nifti import load_image, save_image

log = logging.getLogger(__name__)


class NoB0Error(InputDataError):
    """A DWI run without any volume of b <= the b0 threshold; the message names the file."""


def b0_reference(dwi: np.ndarray, bvals: np.ndarray, threshold: float = B0_THRESHOLD) -> np.ndarray:
    """Mean ``(X, Y, Z)`` float32 of the volumes of ``dwi`` ``(X, Y, Z, N)`` whose b-value (s/mm^2,
    ``(N,)``) is <= ``threshold``. Raises :class:`NoB0Error` when there is none."""
    dwi = np.asarray(dwi)
    bvals = np.asarray(bvals, dtype=np.float64).reshape(-1)
    if dwi.ndim != 4:
        raise InputDataError(f"DWI of shape {dwi.shape} is not 4D")
    if dwi.shape[3] != bvals.size:
        raise InputDataError(f"DWI has {dwi.shape[3]} volumes but there are {bvals.size} b-values")
    index = np.flatnonzero(bvals <= threshold)
    if index.size == 0:
        raise NoB0Error(f"no b0 volume (b <= {threshold:g} s/mm^2; smallest b = {bvals.min():g})")
    return np.mean(dwi[..., index], axis=-1, dtype=np.float64).astype(np.float32)


def load_series(dwi_path: str | Path, bval_path: str | Path):
    """The 4D DWI image (nibabel, not yet read) and its b-values (s/mm^2), checked to match in count."""
    bvals = read_bvals(bval_path)
    img = load_image(dwi_path, ndim=4, what="DWI")
    if img.shape[3] != bvals.size:
        raise InputDataError(f"{dwi_path}: {img.shape[3]} volumes but {bval_path} has {bvals.size} b-values")
    return img, bvals


def write_b0_reference(
    dwi_path: str | Path,
    bval_path: str | Path,
    out_path: str | Path,
    threshold: float = B0_THRESHOLD,
) -> Path:
    """Write the b0 reference of the run at ``dwi_path`` (with its ``.bval``) to ``out_path`` (same grid)."""
    img, bvals = load_series(dwi_path, bval_path)
    index = np.flatnonzero(bvals <= threshold)
    if index.size == 0:
        raise NoB0Error(
            f"{dwi_path}: no b0 volume (b <= {threshold:g} s/mm^2 in {bval_path}; smallest b = {bvals.min():g})"
        )
    # read only the b0 volumes
    volumes = [_volume(img, dwi_path, i) for i in index]
    ref = np.mean(volumes, axis=0, dtype=np.float64).astype(np.float32)
    log.info("%s: b0 reference from %d volume(s)", Path(dwi_path).name, index.size)
    return save_image(ref, img.affine, out_path, dtype=np.float32, template=img)


def _volume(img, path: str | Path, index: int) -> np.ndarray:
    """Volume ``index`` of a 4D image as float32; raise naming ``path`` on NaN/Inf."""
    data = np.asarray(img.dataobj[..., index], dtype=np.float32)
    if not np.all(np.isfinite(data)):
        raise InputDataError(f"{path}: volume {index} contains NaN or infinite voxels")
    return data
