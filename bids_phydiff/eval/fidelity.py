"""What a reader of the images sees and PSNR/SSIM miss: patch seams and lost detail.

Both scores compare a synthesis with the acquired image of the same volume inside the brain mask, on axial
slices ``(X, Y)`` (a 2-D slice, an ``(X, Y, Z)`` volume whose slices are pooled, or an ``(X, Y, Z, N)``
series, one score per volume). Pure numpy and scipy, float64.

**Seam score** (:func:`seam_score`). The model cuts each slice, centre-padded in-plane to its grid
(:class:`~bids_phydiff.train.dataset.SliceGrid`), into ``patch x patch`` tokens; in image coordinates the
patch boundaries lie before the pixels ``i`` with ``(i + offset) % patch == 0`` along x (offset ``ox``) and
along y (``oy``). The image gradient is taken as first differences ``d = I[i] - I[i - 1]`` along x and along
y, for every pair of neighbours that are both in the brain mask; a difference is *across* a boundary when
pixel ``i`` starts a patch, else *within* a patch. The seam ratio of an image is

    R(I) = mean |d| across boundaries / mean |d| within patches   (x and y differences pooled)

and the score is ``R(synthesis) / R(acquired)``: 1.0 = no seams (the model's grid is arbitrary with respect
to the anatomy, so R(acquired) is about 1 itself), above 1 = steps at the patch edges. A synthesis that is
constant inside every patch scores ``inf``.

**Sharpness score** (:func:`sharpness_score`). The detail of an image is its high-pass
``h(I) = I - G_sigma * I`` on each axial slice, where the Gaussian low-pass (``sigma`` pixels, default 1) is a
normalised convolution over the mask, ``G*(I m) / G*m``, so that nothing outside the brain (the synthesis is
0 there, the acquired data is not) leaks in at the brain's edge. The score is the regression coefficient of
the synthesis's detail on the acquired detail over the mask voxels of all slices,

    sharpness = sum h(synthesis) h(acquired) / sum h(acquired)^2,

i.e. how much of the acquired image's fine structure the synthesis reproduces, in place and with its
amplitude. The acquired image against itself scores exactly 1; a blurred copy scores below 1 (lower with
more blur); noise in the synthesis that is independent of the acquired image averages out of the numerator,
so it cannot raise the score (an energy ratio ``sum h(synthesis)^2 / sum h(acquired)^2`` would reward it);
detail in the wrong place does not count. The acquired image's own noise sits in the denominator: the
noise-free signal itself scores ``E_signal / (E_signal + E_noise)`` of the high-pass band, below 1, so a
synthesis that denoises (as a model's mean does) has that ceiling; compare methods on the same data, and read
scores above 1 as exaggerated detail.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["SHARPNESS_SIGMA", "PatchGrid", "gradient_profile", "seam_ratio", "seam_score", "sharpness_score", "volume_scores"]

SHARPNESS_SIGMA = 1.0
"""Gaussian sigma (pixels) of the sharpness score's low-pass: the detail is the band above ~1/(2 pi sigma)
cycles per pixel (wavelengths below ~6 pixels)."""


@dataclass(frozen=True)
class PatchGrid:
    """The model's patch grid on an ``(X, Y)`` slice: ``patch`` pixels per token side and ``offsets`` (x, y)
    of the slice inside the padded model grid (:attr:`~bids_phydiff.train.dataset.SliceGrid.offsets`)."""

    patch: int
    offsets: tuple[int, int] = (0, 0)

    def __post_init__(self):
        if int(self.patch) < 1:
            raise ValueError(f"patch size must be positive, got {self.patch}")

    @classmethod
    def of_model(cls, patch_size: int, slice_grid) -> "PatchGrid":
        """From the backbone's ``patch_size`` and a :class:`~bids_phydiff.train.dataset.SliceGrid`."""
        return cls(int(patch_size), tuple(int(o) for o in slice_grid.offsets))

    def phases(self, n: int, axis: int) -> np.ndarray:
        """``(n - 1,)`` int: the phase ``(i + offset) % patch`` of pixel ``i = 1..n-1`` along in-plane ``axis``
        (0 = x, 1 = y) in its patch; 0 = the difference ``I[i] - I[i - 1]`` crosses a patch boundary."""
        return (np.arange(1, n) + self.offsets[axis]) % self.patch

    def starts(self, n: int, axis: int) -> np.ndarray:
        """``(n - 1,)`` bool: whether pixel ``i = 1..n-1`` along in-plane ``axis`` (0 = x, 1 = y) starts a
        patch, i.e. whether the difference ``I[i] - I[i - 1]`` crosses a patch boundary."""
        return self.phases(n, axis) == 0


def _slices(image: np.ndarray) -> np.ndarray:
    """``(X, Y)`` or ``(X, Y, Z)`` -> ``(X, Y, Z)`` float64."""
    image = np.asarray(image, dtype=np.float64)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3:
        raise ValueError(f"expected an (X, Y) slice or an (X, Y, Z) volume, got shape {image.shape}")
    return image


def _mask_of(mask, shape) -> np.ndarray:
    if mask is None:
        return np.ones(shape, dtype=bool)
    mask = _slices(mask) > 0
    if mask.shape != shape:
        raise ValueError(f"mask {mask.shape} does not match the image {shape}")
    return mask


def _ratio(across: float, within: float) -> float:
    if within > 0:
        return across / within
    return math.inf if across > 0 else math.nan


def _phase_sums(image, grid: PatchGrid, mask=None) -> tuple[np.ndarray, np.ndarray]:
    """Sum and count of |first difference| ``|I[i] - I[i - 1]|`` by the phase ``(i + offset) % patch`` of
    pixel ``i`` (0 = across a patch boundary), x and y pooled, over neighbour pairs inside ``mask``."""
    image = _slices(image)
    m = _mask_of(mask, image.shape)
    sums, counts = np.zeros(grid.patch), np.zeros(grid.patch)
    for axis in (0, 1):
        diff = np.abs(np.diff(image, axis=axis))
        both = np.logical_and(m[1:] if axis == 0 else m[:, 1:], m[:-1] if axis == 0 else m[:, :-1])
        shape = [1, 1, 1]
        shape[axis] = image.shape[axis] - 1
        phase = grid.phases(image.shape[axis], axis).reshape(shape)
        for k in range(grid.patch):
            where = both & (phase == k)
            sums[k] += diff[where].sum()
            counts[k] += where.sum()
    return sums, counts


def seam_ratio(image, grid: PatchGrid, mask=None) -> float:
    """``R(I)`` of the module docstring: mean |first difference| across patch boundaries over the mean
    within patches, x and y pooled, over neighbour pairs inside ``mask`` (None = everywhere)."""
    sums, counts = _phase_sums(image, grid, mask)
    if counts[0] == 0 or counts[1:].sum() == 0:
        return math.nan  # the mask holds no pair on one side: the grid is coarser than the brain
    return _ratio(sums[0] / counts[0], sums[1:].sum() / counts[1:].sum())


def gradient_profile(image, grid: PatchGrid, mask=None) -> np.ndarray:
    """``(patch,)``: mean |first difference| by phase in the patch (index 0 = across a boundary, k = the
    difference ending ``k`` pixels into a patch), x and y pooled, normalised to a mean of 1. Flat (all about 1)
    for an image without a texture of the token period; the seam ratio sees only index 0 against the rest."""
    sums, counts = _phase_sums(image, grid, mask)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums / counts
    return mean / np.nanmean(mean)


def seam_score(synthesis, acquired, grid: PatchGrid, mask=None) -> float:
    """``R(synthesis) / R(acquired)`` (module docstring) of one slice or volume; 1.0 = no seams."""
    return _ratio(seam_ratio(synthesis, grid, mask), seam_ratio(acquired, grid, mask))


def _detail(image: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    """Per axial slice, ``I - G*(I m) / G*m`` (0 outside the mask)."""
    sigmas = (sigma, sigma, 0.0)
    m = mask.astype(np.float64)
    weight = ndimage.gaussian_filter(m, sigmas, mode="constant")
    low = ndimage.gaussian_filter(image * m, sigmas, mode="constant")
    with np.errstate(invalid="ignore", divide="ignore"):
        low = np.where(mask, low / np.where(weight > 0, weight, 1.0), 0.0)
    return np.where(mask, image - low, 0.0)


def sharpness_score(synthesis, acquired, mask=None, sigma: float = SHARPNESS_SIGMA) -> float:
    """``sum h(synthesis) h(acquired) / sum h(acquired)^2`` over ``mask`` (module docstring); 1.0 for the
    acquired image itself, lower for a blurred one. NaN when the acquired image has no detail in the mask."""
    synthesis, acquired = _slices(synthesis), _slices(acquired)
    if synthesis.shape != acquired.shape:
        raise ValueError(f"images differ in shape: {synthesis.shape} vs {acquired.shape}")
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    m = _mask_of(mask, acquired.shape)
    ha = _detail(acquired, m, sigma)
    hs = _detail(synthesis, m, sigma)
    energy = float(np.sum(ha * ha))
    if energy == 0.0:
        return math.nan
    return float(np.sum(hs * ha)) / energy


def volume_scores(synthesis, acquired, grid: PatchGrid, mask=None) -> dict[str, float]:
    """``{"seam", "sharpness"}`` of one ``(X, Y, Z)`` volume (or ``(X, Y)`` slice) against the acquired one."""
    return {"seam": seam_score(synthesis, acquired, grid, mask),
            "sharpness": sharpness_score(synthesis, acquired, mask)}
