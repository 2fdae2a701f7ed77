"""What q-space completion must get right beyond the images: the non-Gaussian signal and the fibre directions
at each synthesised shell.

* Mean kurtosis (MK, dimensionless): dipy's diffusion kurtosis fit (``DiffusionKurtosisModel``, WLS) of the
  whole multi-shell series, b0 volumes included. It measures how far the decay with b departs from a
  mono-exponential; a Gaussian signal (a tensor, extrapolated or not) has MK 0. Clipped to [0, 3], dipy's
  usual range for tissue.
* Per-shell fibre directions: the tensor of the b0 volumes plus one shell (:func:`.dti.fit_dti`), its
  principal direction against the reference's from the same volumes, in degrees in [0, 90].

b in s/mm^2, b-vectors in the FSL convention of the image the series sits on (both series share them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..prep.gradients import B0_THRESHOLD, SHELL_TOLERANCE, unique_shells
from .dti import fit_dti, principal_angle

__all__ = ["MK_RANGE", "QspaceMaps", "kurtosis_fittable", "mean_kurtosis", "qspace_agreement", "qspace_maps"]

MK_RANGE = (0.0, 3.0)
ISOTROPIC_FA = 1e-3
"""Below this FA a tensor is isotropic to the precision of float32 images (an exactly isotropic signal, such
as the physics baseline's, fits to FA 1e-6..1e-4 after rounding): it has no principal direction. Noise alone
gives FA of several hundredths."""
DKI_PARAMETERS = 22
"""Unknowns of dipy's kurtosis fit per voxel: 6 tensor + 15 kurtosis components + S0."""


def kurtosis_fittable(bvals, *, b0_threshold: float = B0_THRESHOLD) -> bool:
    """Whether a scheme (b in s/mm^2) can have its kurtosis fitted: a b0 volume, two diffusion-weighted
    shells and at least as many volumes as the fit has unknowns."""
    bvals = np.asarray(bvals, dtype=np.float64).reshape(-1)
    b0 = bvals <= b0_threshold
    return bool(b0.any()) and unique_shells(bvals[~b0]).size >= 2 and bvals.size >= DKI_PARAMETERS


def mean_kurtosis(dwi, bvals, bvecs, mask, *, b0_threshold: float = B0_THRESHOLD) -> np.ndarray:
    """``(X, Y, Z)`` mean kurtosis of ``dwi`` ``(X, Y, Z, N)`` inside ``mask`` (0 outside). ValueError
    unless :func:`kurtosis_fittable`."""
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dki import DiffusionKurtosisModel

    bvals = np.asarray(bvals, dtype=np.float64).reshape(-1)
    bvecs = np.asarray(bvecs, dtype=np.float64).reshape(-1, 3).copy()
    mask = np.asarray(mask) > 0
    b0 = bvals <= b0_threshold
    if not kurtosis_fittable(bvals, b0_threshold=b0_threshold):
        raise ValueError(f"a kurtosis fit needs a b0 volume, two diffusion-weighted shells and {DKI_PARAMETERS} "
                         f"volumes; got {bvals.size} with b = {sorted(set(np.round(bvals).tolist()))}")
    bvecs[b0] = 0.0
    model = DiffusionKurtosisModel(gradient_table(bvals, bvecs=bvecs, b0_threshold=b0_threshold), fit_method="WLS")
    fit = model.fit(np.clip(np.asarray(dwi, dtype=np.float64), 0.0, None), mask=mask)
    mk = np.nan_to_num(np.asarray(fit.mk(min_kurtosis=MK_RANGE[0], max_kurtosis=MK_RANGE[1]), dtype=np.float64))
    mk[~mask] = 0.0
    return mk


@dataclass(frozen=True)
class QspaceMaps:
    """What :func:`qspace_agreement` compares, fitted once per series inside a region: ``mk`` ``(V,)`` the
    mean kurtosis of the region's voxels, ``shells`` ``{B: (fa (V,), v1 (V, 3))}`` per diffusion-weighted
    shell with at least 6 volumes, from the tensor of the b0 volumes and that shell."""

    mk: np.ndarray
    shells: dict[float, tuple[np.ndarray, np.ndarray]]


def qspace_maps(series, bvals, bvecs, region, *, b0_threshold: float = B0_THRESHOLD) -> QspaceMaps:
    """:class:`QspaceMaps` of ``series`` ``(X, Y, Z, N)`` inside ``region`` ``(X, Y, Z)`` (not empty)."""
    bvals = np.asarray(bvals, dtype=np.float64).reshape(-1)
    region = np.asarray(region) > 0
    if not region.any():
        raise ValueError("the region for the q-space comparison is empty")
    mk = mean_kurtosis(series, bvals, bvecs, region, b0_threshold=b0_threshold)[region]
    b0 = bvals <= b0_threshold
    shells = {}
    for shell in unique_shells(bvals[~b0]):
        keep = b0 | (np.abs(bvals - shell) <= SHELL_TOLERANCE)
        if np.count_nonzero(keep & ~b0) >= 6:
            fit = fit_dti(np.asarray(series)[..., keep], bvals[keep], np.asarray(bvecs)[keep], region,
                          b0_threshold=b0_threshold)
            shells[float(shell)] = (fit.fa[region], fit.v1[region])
    return QspaceMaps(mk, shells)


def qspace_agreement(prediction: QspaceMaps, reference: QspaceMaps) -> dict[str, float]:
    """MK of the prediction against the reference's: ``mk_mae``, ``mk_bias`` (prediction - reference),
    ``mk_prediction`` and ``mk_reference`` (means), ``voxels``; and per shell B ``angle_median_b<B>``, the
    median angle between the principal directions over the voxels where both fits have one (FA above
    :data:`ISOTROPIC_FA`; NaN where none has)."""
    out = {"mk_mae": float(np.mean(np.abs(prediction.mk - reference.mk))),
           "mk_bias": float(np.mean(prediction.mk - reference.mk)),
           "mk_prediction": float(np.mean(prediction.mk)), "mk_reference": float(np.mean(reference.mk)),
           "voxels": int(reference.mk.size)}
    for shell, (ref_fa, ref_v1) in reference.shells.items():
        fa, v1 = prediction.shells[shell]
        # an exactly isotropic tensor has no principal direction (dipy returns an arbitrary axis, the same one
        # for two isotropic fits): such voxels are left out, not counted as agreeing
        valid = (fa > ISOTROPIC_FA) & (ref_fa > ISOTROPIC_FA)
        angles = principal_angle(v1, ref_v1)[valid]
        out[f"angle_median_b{shell:g}"] = float(np.median(angles)) if angles.size else float("nan")
    return out
