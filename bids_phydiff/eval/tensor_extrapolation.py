"""The classical q-space completion baseline: the acquired shell's tensor, extrapolated to any target.

``S(b, g) = S0 * exp(-b * g^T D g)`` voxel by voxel, with D (mm^2/s) and S0 the tensor fit of the run's
acquired shell(s) (:func:`bids_phydiff.prep.context.fit_tensor`: dipy WLS on the b0 volumes plus those
shells), b in s/mm^2, g unit b-vectors in the frame of the acquired ones (FSL convention of the grid).
Unlike the physics baseline (:func:`.baseline.physics_baseline`, S0 exp(-b ADC_atlas(b)), direction-blind)
it uses the subject's own fibre directions; it has no non-Gaussian (kurtosis) signal, so a model that beats
it at other shells adds what a Gaussian diffusion model cannot. A b0 target (``b <= b0_threshold``) is the
fitted S0; voxels outside the mask are 0 (as synthesis).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..prep.context import TensorMaps, fit_tensor
from ..prep.gradients import B0_THRESHOLD

__all__ = ["TENSOR_BASELINE", "context_baseline", "tensor_extrapolation", "tensor_signal"]

TENSOR_BASELINE = "tensor_extrapolation"
"""The baseline's method name in the metrics tables."""


def tensor_signal(tensor: TensorMaps, bvals, bvecs, *, mask=None, b0_threshold: float = B0_THRESHOLD) -> np.ndarray:
    """``(X, Y, Z, N)`` float32 signal of ``tensor`` for targets ``bvals`` ``(N,)`` and ``bvecs`` ``(N, 3)``."""
    bvals = np.asarray(bvals, dtype=np.float64).reshape(-1)
    bvecs = np.asarray(bvecs, dtype=np.float64).reshape(-1, 3)
    if bvecs.shape[0] != bvals.size:
        raise ValueError(f"{bvals.size} b-values but {bvecs.shape[0]} b-vectors")
    if np.any(bvals < 0) or not np.all(np.isfinite(bvals)) or not np.all(np.isfinite(bvecs)):
        raise ValueError("b-values must be finite and >= 0 and b-vectors finite")
    weighted = bvals > b0_threshold
    norms = np.linalg.norm(bvecs, axis=1)
    if np.any(norms[weighted] == 0):
        raise ValueError("a diffusion-weighted target has a zero b-vector")
    g = np.divide(bvecs, norms[:, None], out=np.zeros_like(bvecs), where=norms[:, None] > 0)
    g[~weighted] = 0.0
    # g^T D g from the lower-triangular components Dxx, Dxy, Dyy, Dxz, Dyz, Dzz
    gx, gy, gz = g.T
    design = np.stack([gx * gx, 2 * gx * gy, gy * gy, 2 * gx * gz, 2 * gy * gz, gz * gz], axis=1)  # (N, 6)
    adc = np.tensordot(np.asarray(tensor.lower, dtype=np.float64), design.T, axes=1)  # (X, Y, Z, N)
    out = (np.asarray(tensor.s0, dtype=np.float64)[..., None] * np.exp(-bvals * adc)).astype(np.float32)
    if mask is not None:
        mask = np.asarray(mask) > 0
        if mask.shape != out.shape[:3]:
            raise ValueError(f"mask {mask.shape} does not match the tensor maps {out.shape[:3]}")
        out[~mask] = 0.0
    return out


def tensor_extrapolation(dwi, bvals, bvecs, mask, target_bvals, target_bvecs, *,
                         shells: Sequence[float] | None = None, b0_threshold: float = B0_THRESHOLD) -> np.ndarray:
    """Baseline series ``(X, Y, Z, N)`` float32 for the targets, from the tensor fit of ``dwi``
    ``(X, Y, Z, M)`` (``bvals``, ``bvecs`` its acquired scheme) restricted to its b0 volumes and ``shells``
    (s/mm^2; None = every acquired shell), inside ``mask``."""
    tensor = fit_tensor(dwi, bvals, bvecs, mask, shells=shells, b0_threshold=b0_threshold)
    return tensor_signal(tensor, target_bvals, target_bvecs, mask=mask, b0_threshold=b0_threshold)


def context_baseline(source, mask, target_bvals, target_bvecs) -> np.ndarray:
    """The baseline a context model is measured against: :func:`tensor_extrapolation` from exactly the
    volumes the model took its context from (a :class:`bids_phydiff.synth.run.ContextSource`: the run's
    b0 volumes and one acquired shell), for the targets ``(N,)`` / ``(N, 3)``; ``(X, Y, Z, N)`` float32."""
    return tensor_extrapolation(source.dwi, source.bvals, source.bvecs, mask, target_bvals, target_bvecs,
                                shells=[source.bval])
