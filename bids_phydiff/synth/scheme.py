"""Target gradient schemes: which volumes a synthesis produces.

A :class:`TargetScheme` is an ordered list of N target volumes, b-values ``(N,)`` in s/mm^2 and unit
b-vectors ``(N, 3)`` in the FSL convention of the model grid (the template grid the b0 sits on, as
written beside the prepared DWI). Three ways to make one:

- :func:`acquired_scheme`: a prepared run's own ``.bval``/``.bvec`` (compare synthetic against acquired);
- :func:`scheme_from_files`: any FSL ``.bval``/``.bvec`` pair (it must already be on the model grid's axes);
- :func:`shell_scheme`: shells and a number of directions per shell, directions spread uniformly over the
  hemisphere (:func:`bids_phydiff.prep.gradients.multishell_scheme`), ``n_b0`` b0 volumes first.

b0 targets: volumes with ``b <= b0_threshold`` (default 50 s/mm^2, as everywhere in the project) are not
sampled; synthesis copies the b0 reference into them (their b-vector is ignored and written as 0).
The model interpolates the ADC atlas linearly between its shells; a diffusion-weighted b-value outside the
bundle's shell range uses the nearest shell's ADC (clamped), which :func:`check_shell_range` logs as a
warning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..prep.gradients import (
    B0_THRESHOLD,
    GradientTable,
    check_unit_length,
    multishell_scheme,
    read_fsl,
    unique_shells,
)

log = logging.getLogger(__name__)

__all__ = [
    "TargetScheme",
    "acquired_scheme",
    "check_shell_range",
    "scheme_from_files",
    "shell_scheme",
]


@dataclass(frozen=True)
class TargetScheme:
    """The target volumes of one synthesis.

    ``bvals`` ``(N,)`` s/mm^2 (float64, >= 0); ``bvecs`` ``(N, 3)`` unit vectors in FSL convention of the
    model grid, zero rows for b0 targets; ``source`` says where the scheme came from (``"acquired"``,
    ``"files"``, ``"shells"`` or ``"arrays"``); ``b0_threshold``: targets with b <= it are b0 targets,
    copied from the b0 reference rather than sampled.
    """

    bvals: np.ndarray
    bvecs: np.ndarray
    source: str = "arrays"
    b0_threshold: float = B0_THRESHOLD

    def __post_init__(self) -> None:
        bvals = np.asarray(self.bvals, dtype=np.float64).reshape(-1)
        bvecs = np.asarray(self.bvecs, dtype=np.float64)
        if bvecs.shape != (bvals.size, 3):
            raise ValueError(f"target scheme: b-vectors of shape {bvecs.shape} for {bvals.size} b-values")
        if bvals.size == 0:
            raise ValueError("target scheme: no volumes")
        if not (np.all(np.isfinite(bvals)) and np.all(np.isfinite(bvecs))):
            raise ValueError("target scheme: b-values and b-vectors must be finite")
        if np.any(bvals < 0):
            raise ValueError(f"target scheme: negative b-values {bvals[bvals < 0].tolist()}")
        b0 = bvals <= self.b0_threshold
        bvecs = bvecs.copy()
        bvecs[b0] = 0.0
        check_unit_length(GradientTable(bvals, bvecs), f"target scheme ({self.source})", self.b0_threshold)
        # exact unit length for the model's conditioning (files carry 6 decimals)
        bvecs[~b0] /= np.linalg.norm(bvecs[~b0], axis=1, keepdims=True)
        bvals.setflags(write=False)
        bvecs.setflags(write=False)
        object.__setattr__(self, "bvals", bvals)
        object.__setattr__(self, "bvecs", bvecs)

    def __len__(self) -> int:
        return int(self.bvals.size)

    @property
    def b0_mask(self) -> np.ndarray:
        """``(N,)`` bool: targets copied from the b0 reference."""
        return self.bvals <= self.b0_threshold

    @property
    def dw_index(self) -> np.ndarray:
        """Indices of the diffusion-weighted (sampled) targets."""
        return np.flatnonzero(~self.b0_mask)

    def shells(self, tolerance: float = 100.0) -> np.ndarray:
        """Nominal b-values of the diffusion-weighted targets, grouped within ``tolerance`` s/mm^2."""
        return unique_shells(self.bvals[~self.b0_mask], tolerance)

    def table(self) -> GradientTable:
        """The scheme as a :class:`~bids_phydiff.prep.gradients.GradientTable` (for ``write_fsl``)."""
        return GradientTable(self.bvals.copy(), self.bvecs.copy())


def acquired_scheme(bval_path: str | Path, bvec_path: str | Path, b0_threshold: float = B0_THRESHOLD) -> TargetScheme:
    """The gradients of a prepared run (its ``desc-preproc`` ``.bval``/``.bvec`` on the model grid)."""
    table = read_fsl(bval_path, bvec_path)
    return TargetScheme(table.bvals, table.bvecs, "acquired", b0_threshold)


def scheme_from_files(bval_path: str | Path, bvec_path: str | Path, b0_threshold: float = B0_THRESHOLD) -> TargetScheme:
    """Any FSL ``.bval``/``.bvec`` pair. The b-vectors must be relative to the model grid's axes."""
    table = read_fsl(bval_path, bvec_path)
    return TargetScheme(table.bvals, table.bvecs, "files", b0_threshold)


def shell_scheme(
    shells: Sequence[float],
    directions: int | Sequence[int],
    n_b0: int = 1,
    seed: int = 0,
    b0_threshold: float = B0_THRESHOLD,
) -> TargetScheme:
    """``n_b0`` b0 targets, then ``directions`` (one count, or one per shell) uniform directions per shell.

    Each shell gets its own deterministic direction set (electrostatic repulsion seeded by ``seed``).
    """
    shells = [float(b) for b in shells]
    if not shells:
        raise ValueError("shell scheme: at least one shell is needed")
    if any(b <= b0_threshold for b in shells):
        raise ValueError(f"shell scheme: shells must be > {b0_threshold:g} s/mm^2, got {shells}")
    if n_b0 < 0:
        raise ValueError(f"shell scheme: n_b0 must be >= 0, got {n_b0}")
    table = multishell_scheme(shells, directions if isinstance(directions, int) else list(directions), n_b0, seed)
    return TargetScheme(table.bvals, table.bvecs, "shells", b0_threshold)


def check_shell_range(scheme: TargetScheme, shells: Sequence[float]) -> np.ndarray:
    """Diffusion-weighted target b-values outside ``[min(shells), max(shells)]`` (sorted, unique).

    Logs one warning when there are any: the ADC atlas is clamped to the nearest shell there, and the
    model was not trained at those b-values.
    """
    shells = np.asarray(shells, dtype=np.float64).reshape(-1)
    if shells.size == 0:
        raise ValueError("the bundle lists no b-shells")
    dw = scheme.bvals[~scheme.b0_mask]
    outside = np.unique(dw[(dw < shells.min()) | (dw > shells.max())])
    if outside.size:
        log.warning(
            "target b-value(s) %s s/mm^2 outside the bundle's shells [%g, %g]: the ADC atlas is clamped to "
            "the nearest shell and the model extrapolates",
            ", ".join(f"{b:g}" for b in outside),
            shells.min(),
            shells.max(),
        )
    return outside
