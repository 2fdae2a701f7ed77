"""Writing NIfTI images the same way every time (scanner-space codes, mm/s units, given dtype)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np


def save_nifti(
    path: str | Path, data: np.ndarray, affine: np.ndarray, dtype, repetition_time: float | None = None
) -> Path:
    """Write ``data`` cast to ``dtype`` (integers are rounded and clipped to the type's range).

    qform and sform both hold ``affine`` with code 1 (scanner); ``repetition_time`` (s) fills the
    fourth zoom of 4D images. Written to a temporary name, then moved into place.
    """
    path = Path(path)
    dtype = np.dtype(dtype)
    data = np.asarray(data)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        data = np.clip(np.rint(data), info.min, info.max)
    img = nib.Nifti1Image(data.astype(dtype), np.asarray(affine, dtype=np.float64))
    img.header.set_data_dtype(dtype)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    if repetition_time is not None and data.ndim == 4:
        zooms = img.header.get_zooms()
        img.header.set_zooms((*zooms[:3], float(repetition_time)))
    tmp = path.with_name(f".{path.name}.part")
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = img.to_bytes()
    with open(tmp, "wb") as fh:
        if path.name.endswith(".gz"):
            # no file name and a zero time stamp in the gzip header: same bytes for the same data
            with gzip.GzipFile(filename="", fileobj=fh, mode="wb", compresslevel=1, mtime=0) as gz:
                gz.write(raw)
        else:
            fh.write(raw)
    os.replace(tmp, path)
    return path
