"""Context maps: per-voxel summaries of a run's acquired diffusion-weighted shell(s), fitted with dipy.

A model with a context (``PhyDiffConfig.context``, issue 19) sees these maps beside the b0, so that what it
synthesises for shells the subject was not scanned with follows the subject's own fibres. The maps do not
depend on the acquired scheme (how many directions, which ones), only on the signal it samples.

Inputs: ``dwi`` ``(X, Y, Z, N)`` in template space (signal units), ``bvals`` ``(N,)`` s/mm^2, ``bvecs``
``(N, 3)`` unit vectors in the FSL convention of the image (zero rows for b0), ``mask`` ``(X, Y, Z)``.
Every map is expressed in the frame the b-vectors are given in (for a prepared run: the FSL frame of the
template grid, the same frame as the model's b-vector condition), so rotating the b-vectors by R rotates
a tensor to R D R^T and an SH function to f(R^T g). Voxels outside the mask are 0 in every channel.

Kinds (channels last, float32):

- ``dti``: 7 channels: the diffusion tensor fitted (dipy ``TensorModel``, WLS, b0 volumes plus the
  chosen shell(s)) in dipy's lower-triangular order :data:`TENSOR_COMPONENTS` = Dxx, Dxy, Dyy, Dxz, Dyz,
  Dzz, times :data:`DIFFUSIVITY_SCALE` (mm^2/s -> um^2/ms: brain values 0..3), then the fitted S0 divided
  by ``scale`` (the subject's intensity scale, DESIGN.md section 4: the 99.5th percentile of the b0 in the
  mask, so S0 is about 0..1).
- ``sh4``: 15 channels per chosen shell (shells in increasing b): the real, even spherical-harmonic
  coefficients up to order :data:`SH_ORDER` = 4 of that shell's signal divided by the voxel's mean b0
  (dipy ``sf_to_sh``, basis ``descoteaux07`` non-legacy, order l = 0, 2, 4 and m = -l..l within each l,
  Laplace-Beltrami regularisation :data:`SH_SMOOTH`; the l = 0 coefficient is sqrt(4 pi) times the
  direction-averaged attenuation, about 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .gradients import B0_THRESHOLD, SHELL_TOLERANCE, unique_shells
from .tensor import tensor_fit

__all__ = ["CONTEXT_KINDS", "DIFFUSIVITY_SCALE", "SHELL_TOLERANCE", "SH_COEFFICIENTS", "SH_ORDER", "SH_SMOOTH",
           "TENSOR_COMPONENTS", "TensorMaps", "context_channels", "context_maps", "fit_sh", "fit_tensor", "shell_volumes"]

CONTEXT_KINDS = ("none", "dti", "sh4")
TENSOR_COMPONENTS = ("Dxx", "Dxy", "Dyy", "Dxz", "Dyz", "Dzz")
"""The order of the 6 tensor channels (dipy's ``lower_triangular``)."""
DIFFUSIVITY_SCALE = 1e3
"""Tensor channels are D in mm^2/s times this (um^2/ms)."""
SH_ORDER = 4
SH_COEFFICIENTS = 15
"""Even real SH coefficients up to order 4: 1 + 5 + 9."""
SH_SMOOTH = 0.006
"""Laplace-Beltrami regularisation of the SH fit (dipy's Q-ball default); keeps the fit well posed with
fewer than 15 directions on a shell."""


def context_channels(kind: str, shells: int = 1) -> int:
    """Channels of the ``kind`` maps for ``shells`` context shells (0 for ``none``)."""
    if kind not in CONTEXT_KINDS:
        raise ValueError(f"context must be one of {list(CONTEXT_KINDS)}, got {kind!r}")
    return {"none": 0, "dti": len(TENSOR_COMPONENTS) + 1, "sh4": SH_COEFFICIENTS * shells}[kind]


@dataclass(frozen=True)
class TensorMaps:
    """A tensor fit: ``lower`` ``(X, Y, Z, 6)`` mm^2/s in :data:`TENSOR_COMPONENTS` order, ``s0``
    ``(X, Y, Z)`` in signal units; both 0 outside the fitted mask."""

    lower: np.ndarray
    s0: np.ndarray

    def matrix(self) -> np.ndarray:
        """The tensors as symmetric matrices ``(X, Y, Z, 3, 3)`` mm^2/s."""
        xx, xy, yy, xz, yz, zz = np.moveaxis(self.lower, -1, 0)
        rows = [np.stack([xx, xy, xz], -1), np.stack([xy, yy, yz], -1), np.stack([xz, yz, zz], -1)]
        return np.stack(rows, axis=-2)


def _check(dwi, bvals, bvecs, mask) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    dwi = np.asarray(dwi, dtype=np.float64)
    bvals = np.asarray(bvals, dtype=np.float64).reshape(-1)
    bvecs = np.asarray(bvecs, dtype=np.float64).reshape(-1, 3)
    mask = np.asarray(mask) > 0
    if dwi.ndim != 4 or dwi.shape[3] != bvals.size or bvecs.shape[0] != bvals.size or mask.shape != dwi.shape[:3]:
        raise ValueError(f"need dwi (X, Y, Z, N), {bvals.size} b-values and b-vectors and a mask on the grid; "
                         f"got dwi {dwi.shape}, bvecs {bvecs.shape}, mask {mask.shape}")
    if not np.all(np.isfinite(dwi)):
        raise ValueError("the DWI series has NaN or infinite values")
    return dwi, bvals, bvecs, mask


def shell_volumes(bvals, shells: Sequence[float] | None = None, b0_threshold: float = B0_THRESHOLD,
                  tolerance: float = SHELL_TOLERANCE) -> dict[float, np.ndarray]:
    """``{shell: volume indices}`` for each of ``shells`` (s/mm^2; None = every diffusion-weighted shell of
    ``bvals``), in increasing b. A shell with no volume within ``tolerance`` is a ValueError naming it."""
    bvals = np.asarray(bvals, dtype=np.float64).reshape(-1)
    weighted = bvals > b0_threshold
    if shells is None:
        shells = unique_shells(bvals[weighted], tolerance)
    out = {}
    for shell in sorted(float(b) for b in shells):
        index = np.flatnonzero(weighted & (np.abs(bvals - shell) <= tolerance))
        if index.size == 0:
            present = [float(b) for b in unique_shells(bvals[weighted], tolerance)]
            raise ValueError(f"no volume on the b = {shell:g} s/mm^2 shell (the run has shells {present})")
        out[shell] = index
    if not out:
        raise ValueError("the run has no diffusion-weighted volume")
    return out


def _b0_index(bvals: np.ndarray, b0_threshold: float) -> np.ndarray:
    index = np.flatnonzero(bvals <= b0_threshold)
    if index.size == 0:
        raise ValueError(f"no b0 volume (b <= {b0_threshold:g} s/mm^2)")
    return index


def fit_tensor(dwi, bvals, bvecs, mask, *, shells: Sequence[float] | None = None, fit_method: str = "WLS",
               b0_threshold: float = B0_THRESHOLD) -> TensorMaps:
    """The diffusion tensor and S0 of the b0 volumes plus the ``shells`` volumes (None = all), in the frame
    of ``bvecs``. ValueError for fewer than 6 diffusion-weighted volumes, no b0, or a missing shell."""
    dwi, bvals, bvecs, mask = _check(dwi, bvals, bvecs, mask)
    weighted = np.concatenate(list(shell_volumes(bvals, shells, b0_threshold).values()))
    keep = np.concatenate([_b0_index(bvals, b0_threshold), np.sort(weighted)])
    fit = tensor_fit(dwi[..., keep], bvals[keep], bvecs[keep], mask, fit_method=fit_method,
                     b0_threshold=b0_threshold, return_s0=True)
    lower = np.nan_to_num(np.asarray(fit.lower_triangular(), dtype=np.float64))
    s0 = np.nan_to_num(np.asarray(fit.S0_hat, dtype=np.float64))
    lower[~mask], s0[~mask] = 0.0, 0.0
    return TensorMaps(lower, s0)


def fit_sh(dwi, bvals, bvecs, mask, *, shells: Sequence[float] | None = None, smooth: float = SH_SMOOTH,
           b0_threshold: float = B0_THRESHOLD) -> np.ndarray:
    """``(X, Y, Z, 15 * S)`` float64: per shell (increasing b), the order-4 even SH coefficients of the
    signal divided by the voxel's mean b0 (0 where that mean is not positive or outside the mask)."""
    from dipy.core.sphere import Sphere
    from dipy.reconst.shm import sf_to_sh

    dwi, bvals, bvecs, mask = _check(dwi, bvals, bvecs, mask)
    b0 = dwi[..., _b0_index(bvals, b0_threshold)].mean(axis=-1)
    inside = mask & (b0 > 0)
    groups = shell_volumes(bvals, shells, b0_threshold)
    out = np.zeros(mask.shape + (SH_COEFFICIENTS * len(groups),))
    for i, index in enumerate(groups.values()):
        dirs = bvecs[index] / np.linalg.norm(bvecs[index], axis=1, keepdims=True)
        attenuation = dwi[inside][:, index] / b0[inside][:, None]
        coef = sf_to_sh(attenuation, Sphere(xyz=dirs), sh_order_max=SH_ORDER, basis_type="descoteaux07",
                        legacy=False, smooth=smooth)
        out[inside, i * SH_COEFFICIENTS:(i + 1) * SH_COEFFICIENTS] = coef
    return out


def context_maps(kind: str, dwi, bvals, bvecs, mask, *, shells: Sequence[float] | None = None,
                 scale: float | None = None, b0_threshold: float = B0_THRESHOLD) -> np.ndarray:
    """The ``kind`` context (see the module docstring) ``(X, Y, Z, C)`` float32 of the ``shells`` volumes
    (None = every diffusion-weighted shell). ``scale``: the subject's intensity scale for the dti S0 channel
    (None = the 99.5th percentile of the mean b0 inside the mask). ``none`` gives C = 0."""
    channels = context_channels(kind, 1)
    if kind == "none":
        return np.zeros(np.shape(mask) + (channels,), dtype=np.float32)
    if kind == "sh4":
        return fit_sh(dwi, bvals, bvecs, mask, shells=shells, b0_threshold=b0_threshold).astype(np.float32)
    tensor = fit_tensor(dwi, bvals, bvecs, mask, shells=shells, b0_threshold=b0_threshold)
    if scale is None:
        dwi_, bvals_, _, mask_ = _check(dwi, bvals, bvecs, mask)
        b0 = dwi_[..., _b0_index(bvals_, b0_threshold)].mean(axis=-1)[mask_]
        scale = float(np.percentile(b0, 99.5)) if b0.size else 0.0
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"the intensity scale must be positive, got {scale}")
    return np.concatenate([tensor.lower * DIFFUSIVITY_SCALE, tensor.s0[..., None] / scale], axis=-1).astype(np.float32)
