"""The diffusion tensor fit (dipy ``TensorModel``) that the context maps and the DTI evaluation share.

b0 volumes (b <= ``b0_threshold``) get zero b-vectors, negative signal is clipped to 0, and voxels outside
the mask are not fitted. b-values in s/mm^2, b-vectors in the frame the tensors are wanted in (FSL
convention of the image they sit beside).
"""

from __future__ import annotations

import numpy as np

from .gradients import B0_THRESHOLD


def tensor_fit(dwi, bvals, bvecs, mask, *, fit_method: str = "WLS", b0_threshold: float = B0_THRESHOLD,
               return_s0: bool = False):
    """dipy's ``TensorFit`` of ``dwi`` ``(X, Y, Z, N)`` inside ``mask`` ``(X, Y, Z)``. ValueError for shapes
    that do not match, no b0 volume or fewer than 6 diffusion-weighted volumes."""
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel

    dwi = np.asarray(dwi, dtype=np.float64)
    mask = np.asarray(mask) > 0
    bvals = np.asarray(bvals, dtype=np.float64).reshape(-1)
    bvecs = np.asarray(bvecs, dtype=np.float64).reshape(-1, 3).copy()
    if dwi.ndim != 4 or dwi.shape[3] != bvals.size or bvecs.shape[0] != bvals.size or mask.shape != dwi.shape[:3]:
        raise ValueError(f"need dwi (X, Y, Z, {bvals.size}), as many b-vectors and a mask on its grid; got dwi "
                         f"{dwi.shape}, bvecs {bvecs.shape}, mask {mask.shape}")
    b0 = bvals <= b0_threshold
    if not b0.any():
        raise ValueError(f"a tensor fit needs at least one b0 volume (b <= {b0_threshold:g} s/mm^2)")
    if np.count_nonzero(~b0) < 6:
        raise ValueError(f"a tensor fit needs at least 6 diffusion-weighted volumes, got {np.count_nonzero(~b0)}")
    bvecs[b0] = 0.0
    gtab = gradient_table(bvals, bvecs=bvecs, b0_threshold=b0_threshold)
    model = TensorModel(gtab, fit_method=fit_method, return_S0_hat=return_s0)
    return model.fit(np.clip(dwi, 0.0, None), mask=mask)
