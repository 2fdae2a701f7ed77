"""The model grid of a bundle, and the check that a subject's volumes are on it.

DESIGN.md section 4: the bundle records the template grid (shape (X, Y, Z), 4x4 affine); synthesis
refuses any other grid. Slices are axial (the template's third axis), padded in-plane, centred, to a
multiple of ``patch_size * 2 ** (levels - 1)`` (:class:`~bids_phydiff.train.dataset.SliceGrid`).
"""

from __future__ import annotations


from ..errors import InputDataError
from ..model.bundle import GridSpec
from ..model.phydiff import PhyDiff
from ..prep.grid import GRID_ATOL_MM, same_grid
from ..train.dataset import SliceGrid

__all__ = ["GridMismatchError", "check_grid", "slice_grid"]


class GridMismatchError(InputDataError):
    """A volume that is not on the bundle's model grid (exit code 65)."""


def slice_grid(grid: GridSpec | tuple[int, int, int], model: PhyDiff) -> SliceGrid:
    """The padded slice grid for ``model`` on the bundle grid (or a bare (X, Y, Z) shape)."""
    shape = grid.shape if isinstance(grid, GridSpec) else tuple(int(s) for s in grid)
    return SliceGrid.for_multiple(shape, model.config.backbone.size_multiple)


def check_grid(grid: GridSpec, shape, affine, what: str = "volume", atol: float = GRID_ATOL_MM) -> None:
    """Raise :class:`GridMismatchError` naming ``what`` unless its first three dimensions and affine
    (mm, within ``atol``) are the bundle grid's."""
    shape = tuple(int(s) for s in tuple(shape)[:3])
    if shape != tuple(grid.shape):
        raise GridMismatchError(
            f"{what}: grid {shape} is not the model grid {tuple(grid.shape)} of template {grid.template} "
            f"at {grid.resolution:g} mm; synthesise from data prepared for this bundle"
        )
    if not same_grid(shape, affine, grid.shape, grid.affine, atol):
        raise GridMismatchError(
            f"{what}: affine differs from the model grid's (template {grid.template} at {grid.resolution:g} mm)"
        )
