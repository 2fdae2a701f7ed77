"""The physics baseline: DWI predicted from the b0 and the ADC atlas alone, with no learning.

``S_b = S_0 * exp(-b * ADC_atlas(b))`` voxel by voxel (the mono-exponential model behind paper Eq. 3-4),
b in s/mm^2, ADC in mm^2/s, S in the b0's signal units. ``ADC_atlas(b)`` is the atlas linearly
interpolated between its shells (:func:`bids_phydiff.model.schedule.interpolate_adc`, the same rule the
model's schedule uses), clamped to the nearest shell outside their range (logged as a warning). The
atlas is direction-averaged, so the baseline has no dependence on the b-vector: it is what a model
that ignores the direction would at best produce, and the floor Phy-Diff has to beat.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..model.schedule import interpolate_adc
from ..prep.gradients import B0_THRESHOLD

__all__ = ["physics_baseline"]


def physics_baseline(
    s0,
    bvals,
    adc_atlas,
    shells: Sequence[float],
    *,
    mask=None,
    b0_threshold: float = B0_THRESHOLD,
) -> np.ndarray:
    """Baseline series ``(X, Y, Z, N)`` float32 for b-values ``bvals`` ``(N,)``.

    ``s0`` ``(X, Y, Z)``; ``adc_atlas`` ``(X, Y, Z, S)`` mm^2/s for ``shells`` ``(S,)`` s/mm^2 (any order).
    b0 targets (``b <= b0_threshold``) are ``s0``. With ``mask``, voxels outside it are 0 (as synthesis).
    """
    s0 = np.asarray(s0, dtype=np.float64)
    atlas = np.asarray(adc_atlas, dtype=np.float64)
    if atlas.ndim == 3:
        atlas = atlas[..., None]
    shells = np.asarray(shells, dtype=np.float64).reshape(-1)
    if s0.ndim != 3 or atlas.shape != s0.shape + (shells.size,):
        raise ValueError(f"need s0 (X, Y, Z) and an ADC atlas (X, Y, Z, {shells.size}); got {s0.shape}, {atlas.shape}")
    bvals = np.asarray(bvals, dtype=np.float64).reshape(-1)
    if np.any(bvals < 0) or not np.all(np.isfinite(bvals)):
        raise ValueError("b-values must be finite and >= 0")
    order = np.argsort(shells)
    stacked = np.moveaxis(atlas[..., order], -1, 0)  # (S, X, Y, Z)
    out = np.empty(s0.shape + (bvals.size,), dtype=np.float32)
    for b in np.unique(bvals):
        where = bvals == b
        if b <= b0_threshold:
            out[..., where] = s0[..., None]
            continue
        adc = interpolate_adc(stacked, shells[order], float(b))
        out[..., where] = (s0 * np.exp(-b * adc))[..., None]
    if mask is not None:
        mask = np.asarray(mask) > 0
        if mask.shape != s0.shape:
            raise ValueError(f"mask {mask.shape} does not match s0 {s0.shape}")
        out[~mask] = 0.0
    return out
