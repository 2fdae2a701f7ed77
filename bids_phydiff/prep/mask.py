"""Brain mask of a b0 image: dipy's ``median_otsu``, cleaned to one solid connected blob."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..errors import InputDataError
from .nifti import load_data, load_image, save_image, voxel_sizes

log = logging.getLogger(__name__)


class MaskError(InputDataError):
    """No plausible brain mask could be found; the message names the file."""


@dataclass(frozen=True)
class MaskConfig:
    """``median_otsu`` settings, the median filter radius given in mm (scaled to the voxel size)."""

    median_radius_mm: float = 6.0
    numpass: int = 4
    fill_holes: bool = True
    min_voxels: int = 27


def brain_mask(b0: np.ndarray, zooms=(1.0, 1.0, 1.0), config: MaskConfig = MaskConfig()) -> np.ndarray:
    """Boolean brain mask ``(X, Y, Z)`` of a b0 image ``(X, Y, Z)`` with voxel sizes ``zooms`` (mm).

    Otsu threshold after median filtering (dipy ``median_otsu``), then the largest connected component
    with its holes filled (in 3D and slice by slice along each axis). Raises :class:`MaskError` when the
    result is (nearly) empty.
    """
    from dipy.segment.mask import median_otsu

    b0 = np.asarray(b0, dtype=np.float32)
    if b0.ndim != 3:
        raise InputDataError(f"b0 of shape {b0.shape} is not 3D")
    if not np.all(np.isfinite(b0)):
        raise InputDataError("b0 contains NaN or infinite voxels")
    if float(b0.max()) <= float(b0.min()):
        raise MaskError("b0 is constant: no brain to find")
    radius = max(1, int(round(config.median_radius_mm / float(np.mean(zooms)))))
    _, mask = median_otsu(b0, median_radius=radius, numpass=config.numpass)
    mask = largest_component(mask)
    if config.fill_holes and mask.any():
        mask = ndimage.binary_fill_holes(mask)
        for axis in range(3):
            for i in range(mask.shape[axis]):
                index = [slice(None)] * 3
                index[axis] = i
                mask[tuple(index)] = ndimage.binary_fill_holes(mask[tuple(index)])
    if mask.sum() < config.min_voxels:
        raise MaskError(f"brain mask has {int(mask.sum())} voxels (fewer than {config.min_voxels})")
    return mask


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 6-connected component of a boolean array (all False when it is empty)."""
    labels, count = ndimage.label(mask)
    if count <= 1:
        return labels > 0
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def write_brain_mask(b0_path: str | Path, out_path: str | Path, config: MaskConfig = MaskConfig()) -> Path:
    """Write the brain mask (uint8, 0/1) of the b0 image at ``b0_path`` to ``out_path``."""
    img = load_image(b0_path, ndim=3, what="b0 reference")
    data = load_data(img, b0_path, "b0 reference")
    try:
        mask = brain_mask(data, voxel_sizes(img.affine), config)
    except InputDataError as exc:
        raise MaskError(f"{b0_path}: {exc}") from None
    log.info("%s: brain mask of %.0f ml", Path(b0_path).name, mask.sum() * np.prod(voxel_sizes(img.affine)) / 1000)
    return save_image(mask, img.affine, out_path, dtype=np.uint8, template=img)
