"""Input checks of a DWI run before any work starts (DESIGN.md section 6).

Each failure raises an error whose message names the file and the problem. A missing T1w is
not an error: the run is registered to the template directly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputDataError
from ..prep.gradients import B0_THRESHOLD, GradientTable, check_unit_length, read_fsl
from .layout import DwiRun

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckedRun:
    """A DWI run that passed the checks, with what was learnt on the way."""

    run: DwiRun
    shape: tuple[int, ...]
    """(X, Y, Z, N)"""
    zooms: tuple[float, ...]
    """voxel size in mm, (3,)"""
    gradients: GradientTable
    n_b0: int
    shells: tuple[float, ...]


def _load_nifti(path: Path):
    import nibabel as nib

    try:
        return nib.load(str(path))
    except Exception as exc:  # nibabel raises several types for unreadable files
        raise InputDataError(f"{path}: cannot read as NIfTI ({exc})") from None


def check_finite(img, path: Path) -> None:
    """Raise if any voxel is NaN or Inf; reads one volume at a time to keep memory flat."""
    data = img.dataobj
    scaling = [v for v in (img.dataobj.slope, img.dataobj.inter) if v is not None]
    if np.issubdtype(np.dtype(img.get_data_dtype()), np.integer) and np.all(np.isfinite(scaling)):
        return  # finitely scaled integers cannot be NaN or Inf
    n = img.shape[3] if len(img.shape) == 4 else 1
    for i in range(n):
        vol = np.asanyarray(data[..., i] if len(img.shape) == 4 else data)
        bad = ~np.isfinite(vol)
        if bad.any():
            where = tuple(int(c) for c in np.argwhere(bad)[0])
            raise InputDataError(
                f"{path}: {int(bad.sum())} NaN/Inf voxel(s) in volume {i} (first at voxel {where})"
            )


def check_dwi_run(run: DwiRun, b0_threshold: float = B0_THRESHOLD) -> CheckedRun:
    """Check one run: a 4D image, matching bval/bvec, unit b-vectors, a b0 volume, finite voxels."""
    if run.bval is None:
        raise InputDataError(f"{run.dwi}: no .bval file (looked beside it and up the BIDS inheritance chain)")
    if run.bvec is None:
        raise InputDataError(f"{run.dwi}: no .bvec file (looked beside it and up the BIDS inheritance chain)")
    img = _load_nifti(run.dwi)
    shape = tuple(int(s) for s in img.shape)
    if len(shape) != 4 or shape[3] < 2:
        raise InputDataError(
            f"{run.dwi}: image is {len(shape)}D with shape {shape}; a DWI run needs a 4D series "
            "with one volume per gradient"
        )
    table = read_fsl(run.bval, run.bvec)
    if len(table) != shape[3]:
        raise InputDataError(
            f"{run.bval}: {len(table)} b-values but {run.dwi.name} has {shape[3]} volumes"
        )
    b0 = table.b0_mask(b0_threshold)
    if not b0.any():
        raise InputDataError(
            f"{run.bval}: no b0 volume (no b-value <= {b0_threshold:g} s/mm^2); a b0 is needed as the "
            "reference and the model's input (see --b0-threshold)"
        )
    if b0.all():
        raise InputDataError(f"{run.bval}: every volume is a b0; there is no diffusion weighting")
    check_unit_length(table, run.bvec, b0_threshold)
    check_finite(img, run.dwi)
    if run.t1w is not None:
        t1 = _load_nifti(run.t1w)
        if len(t1.shape) != 3 and not (len(t1.shape) == 4 and t1.shape[3] == 1):
            raise InputDataError(f"{run.t1w}: a T1w must be a 3D image, found shape {t1.shape}")
    return CheckedRun(
        run=run,
        shape=shape,
        zooms=tuple(float(z) for z in img.header.get_zooms()[:3]),
        gradients=table,
        n_b0=int(b0.sum()),
        shells=tuple(float(s) for s in table.shells(b0_threshold)),
    )


def check_runs(runs: list[DwiRun], b0_threshold: float = B0_THRESHOLD) -> list[CheckedRun]:
    """Check every run before any work starts, so a bad file stops the run with nothing written."""
    checked = [check_dwi_run(run, b0_threshold) for run in runs]
    for c in checked:
        LOGGER.info(
            "%s: %s, %d b0 + shells %s%s",
            c.run.dwi.name,
            "x".join(map(str, c.shape)),
            c.n_b0,
            "/".join(f"{s:g}" for s in c.shells),
            "" if c.run.t1w else " (no T1w)",
        )
    return checked
