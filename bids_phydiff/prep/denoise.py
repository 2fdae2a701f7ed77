"""Denoising of a raw DWI series with dipy, the first step of prepare (``--denoise``).

``mppca``: Marchenko-Pastur PCA over local patches (``dipy.denoise.localpca.mppca``); the patch is the
smallest cube of radius >= 2 voxels that holds at least as many voxels as the series has volumes, as the
method needs. ``patch2self``: each volume regressed on the others (``dipy.denoise.patch2self``, ordinary
least squares, dipy's version 3), which needs no noise model. Both run on the whole image before the b0
reference, the mask and motion correction, so every later step sees the denoised series.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .b0 import load_series
from .gradients import B0_THRESHOLD
from .nifti import load_data, save_image

log = logging.getLogger(__name__)

METHODS = ("mppca", "patch2self")
MIN_PATCH_RADIUS = 2
"""voxels: dipy's default (5x5x5 patches)"""


def mppca_radius(n_volumes: int) -> int:
    """Patch radius (voxels) for MP-PCA: at least :data:`MIN_PATCH_RADIUS`, and a patch of at least
    ``n_volumes`` voxels, so that the noise eigenvalues can be told from the signal's."""
    radius = MIN_PATCH_RADIUS
    while (2 * radius + 1) ** 3 < n_volumes:
        radius += 1
    return radius


def denoise(data: np.ndarray, bvals: np.ndarray, method: str, b0_threshold: float = B0_THRESHOLD,
            tmp_dir: str | Path | None = None) -> np.ndarray:
    """The denoised series ``(X, Y, Z, N)``, same shape; a float input keeps its dtype, others give float32.

    ``bvals`` ``(N,)`` in s/mm^2 (patch2self treats b <= ``b0_threshold`` as b0); ``tmp_dir`` holds
    patch2self's temporary files (default: the system's).
    """
    from dipy.denoise.localpca import mppca
    from dipy.denoise.patch2self import patch2self

    if method not in METHODS:
        raise ValueError(f"denoising method {method!r} is not one of {METHODS}")
    data = np.asarray(data)
    if data.ndim != 4 or data.shape[3] < 2:
        raise ValueError(f"denoising needs a 4D series of at least 2 volumes, got shape {data.shape}")
    bvals = np.asarray(bvals, dtype=np.float64).ravel()
    if bvals.size != data.shape[3]:
        raise ValueError(f"{bvals.size} b-values for {data.shape[3]} volumes")
    dtype = data.dtype if np.issubdtype(data.dtype, np.floating) else np.dtype(np.float32)
    work = data.astype(np.float32, copy=False)
    if method == "mppca":
        out = mppca(work, patch_radius=mppca_radius(data.shape[3]), suppress_warning=True)
    else:
        out = patch2self(work, bvals, model="ols", b0_threshold=b0_threshold, tmp_dir=None if tmp_dir is None
                         else str(tmp_dir))
    return np.asarray(out).astype(dtype, copy=False)


def denoising_metadata(method: str, n_volumes: int) -> dict:
    """What the prepared DWI's sidecar says about the denoising (key ``Denoising``)."""
    import dipy

    if method == "mppca":
        function, parameters = "dipy.denoise.localpca.mppca", {"PatchRadius": mppca_radius(n_volumes)}
    elif method == "patch2self":
        function, parameters = "dipy.denoise.patch2self.patch2self", {"Model": "ols", "Version": 3}
    else:
        raise ValueError(f"denoising method {method!r} is not one of {METHODS}")
    return {"Method": method, "Software": "dipy", "SoftwareVersion": dipy.__version__, "Function": function,
            "Parameters": parameters}


def write_denoised(dwi_path: str | Path, bval_path: str | Path, out_path: str | Path, method: str,
                   b0_threshold: float = B0_THRESHOLD, tmp_dir: str | Path | None = None) -> Path:
    """Denoise the series at ``dwi_path`` (with its ``.bval``) into ``out_path``: same grid, float32."""
    img, bvals = load_series(dwi_path, bval_path)
    data = load_data(img, dwi_path, "DWI")
    log.info("%s: denoising %s volumes with %s", Path(dwi_path).name, img.shape[3], method)
    out = denoise(data, bvals, method, b0_threshold, tmp_dir)
    return save_image(out, img.affine, out_path, dtype=np.float32, template=img)
