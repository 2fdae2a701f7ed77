"""Voxel grids and moving images between them.

A grid is a shape (X, Y, Z) and a voxel -> RAS+ mm affine (4, 4). Functions that take a ``grid`` accept
any object with ``shape`` and ``affine`` attributes (a :class:`~.templates.TemplateGrid`, say);
:func:`pad_to_multiple` needs a dataclass, since it returns a copy with a new shape and affine.
:func:`same_grid` is the one test of grid equality in the package.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np

from .nifti import voxel_sizes

GRID_ATOL_MM = 1e-3
"""Default tolerance (mm) of :func:`same_grid` on the affine's entries."""


def same_grid(shape_a, affine_a, shape_b, affine_b, atol: float = GRID_ATOL_MM) -> bool:
    """True when two grids are one: the first three dimensions of the shapes are equal and the (4, 4)
    affines agree within ``atol`` mm (``np.allclose``, default relative tolerance). Later dimensions
    (volumes of a 4D series) are ignored."""
    if tuple(int(s) for s in tuple(shape_a)[:3]) != tuple(int(s) for s in tuple(shape_b)[:3]):
        return False
    a = np.asarray(affine_a, dtype=np.float64)
    b = np.asarray(affine_b, dtype=np.float64)
    return a.shape == (4, 4) and b.shape == (4, 4) and bool(np.allclose(a, b, atol=atol))


def regrid(affine: np.ndarray, shape, spacing_mm: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """A grid covering the same box as (``affine``, ``shape``) with isotropic voxels of ``spacing_mm``.

    Axis directions are kept; the outer corner of the first voxel stays in place; the shape is rounded up.
    """
    affine = np.asarray(affine, dtype=np.float64)
    zooms = voxel_sizes(affine)
    directions = affine[:3, :3] / zooms
    extent = np.asarray(shape[:3], dtype=np.float64) * zooms
    new_shape = tuple(int(n) for n in np.ceil(extent / spacing_mm - 1e-6))
    corner = affine[:3, 3] - affine[:3, :3] @ np.full(3, 0.5)
    new = np.eye(4)
    new[:3, :3] = directions * spacing_mm
    new[:3, 3] = corner + new[:3, :3] @ np.full(3, 0.5)
    return new_shape, new


def resample_to_grid(path: str | Path, grid, order: int = 1, is_mask: bool = False) -> np.ndarray:
    """Values of the image at ``path`` (3D or 4D, any grid in the same world space) on ``grid``.

    ``order`` 0 (labels), 1 (linear) or 3 (cubic). Down-sampling smooths first (Gaussian matched to the
    voxel size change) unless ``order`` is 0. ``is_mask`` returns a boolean (linear, then >= 0.5).
    Integer translations (padding, cropping) copy voxels without interpolation. Outside the image: 0.
    """
    from scipy import ndimage

    img = nib.load(str(path))
    data = np.asarray(img.dataobj, dtype=np.float32)
    vox2vox = np.linalg.inv(img.affine) @ grid.affine
    linear, offset = vox2vox[:3, :3], vox2vox[:3, 3]
    if np.allclose(linear, np.eye(3), atol=1e-6) and np.allclose(offset, np.round(offset), atol=1e-4):
        out = _shift_copy(data, np.round(offset).astype(int), grid.shape)
        return out >= 0.5 if is_mask else out
    if is_mask:
        order = 1
    sigma = None
    if order > 0:
        ratio = voxel_sizes(grid.affine) / voxel_sizes(img.affine)
        if np.any(ratio > 1.01):
            sigma = np.sqrt(np.clip(ratio**2 - 1.0, 0.0, None)) / (2.0 * math.sqrt(2.0 * math.log(2.0)))

    def one(volume):
        if sigma is not None:
            volume = ndimage.gaussian_filter(volume, sigma, mode="nearest")
        return ndimage.affine_transform(volume, linear, offset=offset, output_shape=grid.shape, order=order,
                                        mode="constant", cval=0.0, prefilter=order > 1)

    if data.ndim == 3:
        out = one(data)
    else:
        out = np.stack([one(data[..., i]) for i in range(data.shape[3])], axis=-1)
    out = out.astype(np.float32)
    return out >= 0.5 if is_mask else out


def _shift_copy(data: np.ndarray, offset: np.ndarray, shape) -> np.ndarray:
    """out[i] = data[i + offset] where defined, 0 elsewhere (spatial axes only)."""
    out = np.zeros(tuple(shape) + data.shape[3:], dtype=data.dtype)
    src, dst = [], []
    for axis in range(3):
        lo = max(0, -offset[axis])
        hi = min(shape[axis], data.shape[axis] - offset[axis])
        if hi <= lo:
            return out
        dst.append(slice(lo, hi))
        src.append(slice(lo + offset[axis], hi + offset[axis]))
    out[tuple(dst)] = data[tuple(src)]
    return out


def pad_to_multiple(grid, multiple: int, axes: tuple[int, ...] = (0, 1)):
    """``grid`` grown along ``axes`` to a multiple of ``multiple`` voxels, evenly on both sides (the extra
    voxel, if odd, at the end). World positions of the existing voxels do not change."""
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    shape = list(grid.shape)
    before = np.zeros(3)
    for axis in axes:
        total = (-shape[axis]) % multiple
        before[axis] = total // 2
        shape[axis] += total
    affine = np.array(grid.affine, dtype=np.float64)
    affine[:3, 3] = affine[:3, 3] - affine[:3, :3] @ before
    return replace(grid, shape=tuple(shape), affine=affine)


def place_on_grid(data: np.ndarray, source, target, fill: float = 0.0) -> np.ndarray:
    """Move an array ``(X, Y, Z, ...)`` from ``source`` to ``target`` when the two grids differ only by whole
    voxels (padding or cropping, e.g. :func:`pad_to_multiple`); voxels new to ``target`` get ``fill``."""
    data = np.asarray(data)
    if tuple(data.shape[:3]) != tuple(source.shape):
        raise ValueError(f"array of shape {data.shape} is not on the source grid {source.shape}")
    vox2vox = np.linalg.inv(source.affine) @ target.affine
    offset = vox2vox[:3, 3]
    if not np.allclose(vox2vox[:3, :3], np.eye(3), atol=1e-6) or not np.allclose(offset, np.round(offset), atol=1e-4):
        raise ValueError("the grids are not whole-voxel shifts of each other; resample instead")
    out = _shift_copy(data, np.round(offset).astype(int), target.shape)
    if fill:
        inside = _shift_copy(np.ones(source.shape, dtype=bool), np.round(offset).astype(int), target.shape)
        out[~inside] = fill
    return out
