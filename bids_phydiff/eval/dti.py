"""Downstream agreement: diffusion tensors fitted to a synthetic and to a reference series (dipy).

Both series are fitted with the same :class:`dipy.reconst.dti.TensorModel` (weighted least squares by
default) and the same gradient table (b in s/mm^2, b-vectors as in the files: FSL convention of the image
axes, so the principal directions of both fits are in the same frame). Compared inside a white-matter
mask: FA (dimensionless), MD (mm^2/s) and the angle between principal eigenvectors in degrees, in
[0, 90] (an eigenvector's sign is arbitrary, so v and -v are the same direction).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..prep.gradients import B0_THRESHOLD
from ..prep.tensor import tensor_fit

__all__ = ["DtiMaps", "dti_agreement", "fit_dti", "principal_angle"]


@dataclass(frozen=True)
class DtiMaps:
    """``fa`` ``(X, Y, Z)``, ``md`` ``(X, Y, Z)`` mm^2/s, ``v1`` ``(X, Y, Z, 3)`` unit principal eigenvectors;
    0 outside the fitted mask."""

    fa: np.ndarray
    md: np.ndarray
    v1: np.ndarray


def fit_dti(dwi, bvals, bvecs, mask, *, fit_method: str = "WLS", b0_threshold: float = B0_THRESHOLD) -> DtiMaps:
    """Fit tensors to ``dwi`` ``(X, Y, Z, N)`` inside ``mask`` ``(X, Y, Z)`` (:func:`~..prep.tensor.tensor_fit`)."""
    mask = np.asarray(mask) > 0
    fit = tensor_fit(dwi, bvals, bvecs, mask, fit_method=fit_method, b0_threshold=b0_threshold)
    fa = np.nan_to_num(np.asarray(fit.fa, dtype=np.float64))
    md = np.nan_to_num(np.asarray(fit.md, dtype=np.float64))
    v1 = np.nan_to_num(np.asarray(fit.evecs, dtype=np.float64)[..., :, 0])
    fa[~mask], md[~mask], v1[~mask] = 0.0, 0.0, 0.0
    return DtiMaps(fa, md, v1)


def principal_angle(v1, v2) -> np.ndarray:
    """Angle in degrees in [0, 90] between direction arrays ``(..., 3)``, sign-invariant (0 where either is 0)."""
    v1 = np.asarray(v1, dtype=np.float64)
    v2 = np.asarray(v2, dtype=np.float64)
    n1 = np.linalg.norm(v1, axis=-1)
    n2 = np.linalg.norm(v2, axis=-1)
    valid = (n1 > 0) & (n2 > 0)
    cos = np.zeros(n1.shape)
    np.divide(np.abs(np.sum(v1 * v2, axis=-1)), n1 * n2, out=cos, where=valid)
    angle = np.degrees(np.arccos(np.clip(cos, 0.0, 1.0)))
    return np.where(valid, angle, 0.0)


def dti_agreement(
    prediction,
    reference,
    bvals,
    bvecs,
    wm_mask,
    *,
    fit_method: str = "WLS",
    b0_threshold: float = B0_THRESHOLD,
) -> dict[str, float]:
    """Tensor agreement of two ``(X, Y, Z, N)`` series with one gradient table, inside ``wm_mask``.

    Returns ``fa_mae``, ``fa_bias`` (mean prediction - reference), ``md_mae``, ``md_bias`` (mm^2/s),
    ``md_relative_error`` (mean |dMD| / mean reference MD), ``angle_mean``, ``angle_median`` (degrees) and
    ``voxels``.
    """
    wm = np.asarray(wm_mask) > 0
    if not wm.any():
        raise ValueError("the white-matter mask is empty")
    pred = fit_dti(prediction, bvals, bvecs, wm, fit_method=fit_method, b0_threshold=b0_threshold)
    ref = fit_dti(reference, bvals, bvecs, wm, fit_method=fit_method, b0_threshold=b0_threshold)
    dfa = pred.fa[wm] - ref.fa[wm]
    dmd = pred.md[wm] - ref.md[wm]
    angle = principal_angle(pred.v1[wm], ref.v1[wm])
    mean_md = float(np.mean(ref.md[wm]))
    return {
        "fa_mae": float(np.mean(np.abs(dfa))),
        "fa_bias": float(np.mean(dfa)),
        "md_mae": float(np.mean(np.abs(dmd))),
        "md_bias": float(np.mean(dmd)),
        "md_relative_error": float(np.mean(np.abs(dmd)) / mean_md) if mean_md > 0 else float("nan"),
        "angle_mean": float(np.mean(angle)),
        "angle_median": float(np.median(angle)),
        "voxels": int(wm.sum()),
    }
