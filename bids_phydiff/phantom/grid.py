"""Voxel grids of the phantom: shape plus voxel-to-world affine (world = RAS+ mm).

Grids are centred on the world origin. ``RAS`` grids have voxel axes along +x, +y, +z; ``LAS``
grids run the first axis right-to-left (negative determinant, the "radiological" storage that
makes FSL b-vectors differ from the world directions by an x flip).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_AXIS_SIGNS = {"RAS": (1.0, 1.0, 1.0), "LAS": (-1.0, 1.0, 1.0)}


@dataclass(frozen=True)
class Grid:
    """``shape`` (X, Y, Z) voxels and ``affine`` (4, 4) voxel index -> world mm."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def voxel_size(self) -> float:
        """Edge length (mm) of the (isotropic) voxels."""
        return float(np.cbrt(abs(np.linalg.det(self.affine[:3, :3]))))

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def world_points(self) -> np.ndarray:
        """World coordinates (mm) of every voxel centre, ``(X*Y*Z, 3)`` in C order of the array."""
        idx = np.indices(self.shape, dtype=np.float64).reshape(3, -1)
        return (self.affine[:3, :3] @ idx + self.affine[:3, 3:4]).T

    def to_json(self) -> dict:
        return {"shape": list(self.shape), "affine": np.asarray(self.affine).round(6).tolist()}


def centred_grid(half_extent_mm, voxel_mm: float, orientation: str = "RAS", odd: bool = False) -> Grid:
    """An isotropic grid of ``voxel_mm`` covering ``[-half, half]`` mm on each axis, centred on 0.

    ``odd=True`` gives an odd voxel count per axis, so a voxel centre sits on the origin
    (TemplateFlow style); otherwise the count is the nearest integer to ``2 * half / voxel``.
    """
    signs = np.asarray(_AXIS_SIGNS[orientation])
    shape = []
    for half in np.asarray(half_extent_mm, dtype=np.float64):
        if odd:
            shape.append(2 * math.ceil(half / voxel_mm - 1e-9) + 1)
        else:
            shape.append(max(1, int(round(2 * half / voxel_mm))))
    shape_arr = np.asarray(shape, dtype=np.float64)
    affine = np.eye(4)
    affine[:3, :3] = np.diag(signs * voxel_mm)
    affine[:3, 3] = -signs * (shape_arr - 1) / 2.0 * voxel_mm
    return Grid(tuple(int(s) for s in shape), affine)
