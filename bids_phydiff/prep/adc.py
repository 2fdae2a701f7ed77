"""The ADC atlas of paper Eq. 4: per b-shell, the mean apparent diffusion coefficient over subjects
and directions, in a common (template) grid.

ADC of one volume = ln(S0 / Sb) / b where both signals are positive, clipped at 0; the atlas is the
mean over every training run and every direction of the shell, voxel by voxel, inside the union of the
brain masks (0 elsewhere). Units: b in s/mm^2, ADC in mm^2/s. Accumulation is streaming, one volume at a
time, so memory does not grow with the number of subjects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .gradients import B0_THRESHOLD, shell_index, unique_shells
from .grid import same_grid


@dataclass
class AdcAccumulator:
    """Running sums of ADC per shell over runs that share one grid ``shape`` (X, Y, Z)."""

    shells: np.ndarray
    shape: tuple[int, int, int]
    tolerance: float = 100.0
    total: np.ndarray = field(init=False)
    count: np.ndarray = field(init=False)
    mask: np.ndarray = field(init=False)

    def __post_init__(self):
        self.shells = np.asarray(self.shells, dtype=np.float64)
        self.total = np.zeros(self.shape + (self.shells.size,), dtype=np.float64)
        self.count = np.zeros(self.shape + (self.shells.size,), dtype=np.int32)
        self.mask = np.zeros(self.shape, dtype=bool)

    def add(self, dwi, bvals: np.ndarray, mask: np.ndarray, b0_threshold: float = B0_THRESHOLD) -> None:
        """Add one run. ``dwi`` is ``(X, Y, Z, N)`` (an array or a nibabel dataobj, read per volume)."""
        bvals = np.asarray(bvals, dtype=np.float64)
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != self.shape or tuple(dwi.shape[:3]) != self.shape:
            raise ValueError(f"run of shape {tuple(dwi.shape)} / mask {mask.shape} is not on the grid {self.shape}")
        b0_idx = np.flatnonzero(bvals <= b0_threshold)
        s0 = np.mean([np.asarray(dwi[..., i], dtype=np.float64) for i in b0_idx], axis=0)
        which = shell_index(bvals, self.shells, self.tolerance)
        self.mask |= mask
        for i in np.flatnonzero((bvals > b0_threshold) & (which >= 0)):
            sb = np.asarray(dwi[..., i], dtype=np.float64)
            valid = mask & (s0 > 0) & (sb > 0)
            adc = np.zeros(self.shape)
            adc[valid] = np.log(s0[valid] / sb[valid]) / bvals[i]
            np.clip(adc, 0.0, None, out=adc)
            self.total[..., which[i]] += adc
            self.count[..., which[i]] += valid

    def atlas(self) -> np.ndarray:
        """``(X, Y, Z, S)`` mean ADC in mm^2/s (0 where no run contributed)."""
        out = np.zeros_like(self.total)
        np.divide(self.total, self.count, out=out, where=self.count > 0)
        return out.astype(np.float32)


def adc_atlas_from_files(
    runs: list[tuple[Path, Path, Path]], shells: np.ndarray | None = None, b0_threshold: float = B0_THRESHOLD
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ADC atlas from prepared runs given as ``(dwi.nii.gz, .bval, mask.nii.gz)`` on one grid.

    Returns ``(atlas (X, Y, Z, S) mm^2/s, shells (S,) s/mm^2, affine (4, 4))``. ``shells`` defaults to the
    union of the runs' shells.
    """
    import nibabel as nib

    if not runs:
        raise ValueError("no runs to build an ADC atlas from")
    if shells is None:
        allb = np.concatenate([np.loadtxt(bval, ndmin=1) for _, bval, _ in runs])
        shells = unique_shells(allb[allb > b0_threshold])
    first = nib.load(str(runs[0][0]))
    acc = AdcAccumulator(np.asarray(shells), tuple(first.shape[:3]))
    for dwi_path, bval_path, mask_path in runs:
        img = nib.load(str(dwi_path))
        if not same_grid(img.shape, img.affine, first.shape, first.affine, atol=1e-4):
            raise ValueError(f"{dwi_path}: not on the grid of {runs[0][0]}")
        bvals = np.loadtxt(bval_path, ndmin=1)
        acc.add(img.dataobj, bvals, np.asarray(nib.load(str(mask_path)).dataobj) > 0, b0_threshold)
    return acc.atlas(), acc.shells, first.affine
