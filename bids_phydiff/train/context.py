"""Context maps of prepared runs for training a model with a context (issue 19), cached per shell.

For each acquired shell of a run that may serve as context, the maps of :func:`bids_phydiff.prep.context.
context_maps` (kind ``dti`` or ``sh4``, one shell each) are computed once from the b0 volumes and that
shell's volumes and stored as ``(Z, C, X, Y)`` float32 ``.npy`` beside the run's slice cache, then memory
mapped. The dti S0 channel is divided by the run's intensity scale (the :class:`~.normalise.Normaliser`
scale of its b0 reference), the same scale its images are normalised with.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from ..bids.prepared import PreparedRun
from ..errors import InputDataError
from ..prep.context import context_maps
from ..prep.gradients import B0_THRESHOLD, SHELL_TOLERANCE, read_fsl, unique_shells

LOGGER = logging.getLogger(__name__)

__all__ = ["context_shells_of", "run_context_maps"]


def context_shells_of(bvals: np.ndarray, wanted: Sequence[float] | None = None,
                      b0_threshold: float = B0_THRESHOLD) -> list[float]:
    """The acquired shells (s/mm^2, increasing) of ``bvals`` that may serve as context: all of them, or those
    within :data:`~bids_phydiff.prep.context.SHELL_TOLERANCE` of one of ``wanted``."""
    bvals = np.asarray(bvals, dtype=np.float64)
    present = [float(b) for b in unique_shells(bvals[bvals > b0_threshold], SHELL_TOLERANCE)]
    if wanted is None:
        return present
    return [b for b in present if any(abs(b - float(w)) <= SHELL_TOLERANCE for w in wanted)]


def run_context_maps(run: PreparedRun, folder: Path, kind: str, scale: float,
                     wanted: Sequence[float] | None = None) -> dict[float, np.ndarray]:
    """``{shell: (Z, C, X, Y) memory-mapped maps}`` of ``run`` for each context shell (see
    :func:`context_shells_of`), written into ``folder`` (the run's cache folder) once. A run without any
    of the ``wanted`` shells is an :class:`InputDataError` (exit 65) naming its DWI file."""
    import nibabel as nib

    table = read_fsl(run.bval, run.bvec)
    shells = context_shells_of(table.bvals, wanted)
    if not shells:
        raise InputDataError(f"{run.dwi}: no acquired shell to take a {kind!r} context from "
                             f"(wanted b = {list(wanted) if wanted is not None else 'any'} s/mm^2)")
    folder = Path(folder)
    out = {}
    img = None
    for shell in shells:
        path = folder / f"context-{kind}-b{shell:g}.npy"
        if not path.is_file():
            if img is None:
                img = nib.load(str(run.dwi))
                mask = np.asarray(nib.load(str(run.mask)).dataobj) > 0
            keep = np.flatnonzero((table.bvals <= B0_THRESHOLD) | (np.abs(table.bvals - shell) <= SHELL_TOLERANCE))
            dwi = np.stack([np.asarray(img.dataobj[..., i], dtype=np.float32) for i in keep], axis=-1)
            maps = context_maps(kind, dwi, table.bvals[keep], table.bvecs[keep], mask, shells=[shell], scale=scale)
            tmp = path.with_name(path.name + ".tmp.npy")
            np.save(tmp, np.ascontiguousarray(maps.transpose(2, 3, 0, 1)))
            tmp.replace(path)
            LOGGER.info("%s: %s context of b = %g (%d channels)", run.dwi, kind, shell, maps.shape[-1])
        out[shell] = np.load(path, mmap_mode="r")
    return out
