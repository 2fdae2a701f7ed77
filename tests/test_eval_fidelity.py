"""Seam and sharpness scores on a real acquired slice stack (sub-xa30 of the shared real data).

The scores must see what a reader sees: blocks on the model's patch grid raise the seam score, blur lowers the
sharpness score, and noise, which a reader does not mistake for detail, does not raise it.
"""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from bids_phydiff.eval.fidelity import PatchGrid, gradient_profile, seam_ratio, seam_score, sharpness_score
from bids_phydiff.prep.mask import brain_mask
from bids_phydiff.train.dataset import SliceGrid

PATCH = 4
SIZE_MULTIPLE = 16  # patch 4 at three levels: the tiny preset's padding multiple


@pytest.fixture(scope="module")
def acquired(real_bids):
    """sub-xa30's b0 and one b = 2500 volume (native 3 mm, cropped in-plane to 69 x 66 so that the centred
    padding to the model grid has odd offsets), its brain mask, and the model's patch grid on it."""
    image = nib.load(str(real_bids / "sub-xa30" / "dwi" / "sub-xa30_dir-AP_dwi.nii.gz"))
    data = np.asarray(image.dataobj, dtype=np.float64)[1:70, 3:69]
    mask = brain_mask(data[..., 0], image.header.get_zooms()[:3])
    grid = SliceGrid.for_multiple(data.shape[:3], SIZE_MULTIPLE)
    return {"b0": data[..., 0], "dwi": data[..., 5], "mask": mask, "grid": PatchGrid.of_model(PATCH, grid),
            "slice_grid": grid}


def _patch_labels(shape, grid: PatchGrid) -> np.ndarray:
    """``(X, Y)`` int: a distinct label per patch of ``grid``."""
    ix = (np.arange(shape[0]) + grid.offsets[0]) // grid.patch
    iy = (np.arange(shape[1]) + grid.offsets[1]) // grid.patch
    return ix[:, None] * 1000 + iy[None, :]


def _blocky(volume: np.ndarray, grid: PatchGrid, weight: float = 1.0) -> np.ndarray:
    """Each patch of each slice moved ``weight`` of the way to its mean."""
    labels = _patch_labels(volume.shape, grid)
    out = volume.copy()
    for z in range(volume.shape[2]):
        means = ndimage.mean(volume[..., z], labels, index=np.unique(labels))
        lookup = dict(zip(np.unique(labels), means))
        flat = np.vectorize(lookup.get)(labels)
        out[..., z] = (1 - weight) * volume[..., z] + weight * flat
    return out


def _blur(volume: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(volume, (sigma, sigma, 0))


def test_the_patch_grid_is_the_models_padded_grid(acquired):
    grid, slice_grid = acquired["grid"], acquired["slice_grid"]
    assert grid.offsets == slice_grid.offsets and grid.offsets != (0, 0)
    # a patch index painted on the padded model grid, cropped back: it steps exactly where the grid says
    h, w = slice_grid.padded
    painted = (np.arange(h)[:, None] // PATCH) * 1000 + (np.arange(w)[None, :] // PATCH)
    image = slice_grid.crop(painted)
    assert np.array_equal(np.diff(image, axis=0)[:, 0] != 0, grid.starts(image.shape[0], 0))
    assert np.array_equal(np.diff(image, axis=1)[0] != 0, grid.starts(image.shape[1], 1))


@pytest.mark.parametrize("volume", ["b0", "dwi"])
def test_an_acquired_image_has_no_seams(acquired, volume):
    image, mask = acquired[volume], acquired["mask"]
    assert seam_ratio(image, acquired["grid"], mask) == pytest.approx(1.0, abs=0.05)
    assert seam_score(image, image, acquired["grid"], mask) == 1.0
    # nor has a blurred or a noisy copy: they lose or add detail everywhere alike
    noisy = image + np.random.default_rng(0).normal(0, 0.3 * image[mask].std(), image.shape)
    for copy in (_blur(image, 1.0), noisy):
        assert seam_score(copy, image, acquired["grid"], mask) == pytest.approx(1.0, abs=0.05)


def test_blocks_of_the_patch_size_raise_the_seam_score(acquired):
    image, mask, grid = acquired["b0"], acquired["mask"], acquired["grid"]
    scores = [seam_score(_blocky(image, grid, w), image, grid, mask) for w in (0.25, 0.5, 0.75)]
    assert scores[0] > 1.2 and scores == sorted(scores)
    assert math.isinf(seam_score(_blocky(image, grid), image, grid, mask))  # constant patches
    # a constant offset per patch (each token's brightness a little off) is a seam too
    labels = _patch_labels(image.shape, grid)
    offsets = [np.random.default_rng(1).normal(0, level * image[mask].mean(), labels.max() + 1)[labels]
               for level in (0.02, 0.1, 0.2)]
    scores = [seam_score(image + offset[..., None], image, grid, mask) for offset in offsets]
    assert scores[0] > 1.0 and scores[1] > 1.2 and scores[2] > 1.5
    # blocks on another grid are not this model's seams
    shifted = PatchGrid(PATCH, (grid.offsets[0] + PATCH // 2, grid.offsets[1] + PATCH // 2))
    assert seam_score(_blocky(image, shifted, 0.5), image, grid, mask) < 1.0


def test_the_gradient_profile_is_flat_for_an_acquired_image_and_shows_a_token_period_texture(acquired):
    image, mask, grid = acquired["dwi"], acquired["mask"], acquired["grid"]
    flat = gradient_profile(image, grid, mask)
    assert flat.shape == (PATCH,) and np.allclose(flat, 1.0, atol=0.06) and flat.mean() == pytest.approx(1.0)
    # the seam ratio is the profile's boundary phase against the others (equal counts per phase here)
    assert flat[0] / flat[1:].mean() == pytest.approx(seam_ratio(image, grid, mask), rel=0.02)
    # each patch a little flattened towards its centre: the differences inside the patch weaken there
    phase = [(np.arange(n) + o) % PATCH for n, o in zip(image.shape[:2], grid.offsets)]
    weight = 1 - 0.5 * np.exp(-((phase[0][:, None] - (PATCH - 1) / 2) ** 2 + (phase[1][None, :] - (PATCH - 1) / 2) ** 2))
    patch_means = _blocky(image, grid)
    textured = patch_means + weight[..., None] * (image - patch_means)
    profile = gradient_profile(textured, grid, mask)
    centre = PATCH // 2  # the difference across the patch centre
    assert profile[centre] < 0.9 * profile[0] and profile[centre] == profile.min()


@pytest.mark.parametrize("volume", ["b0", "dwi"])
def test_sharpness_is_one_for_the_image_and_falls_with_blur(acquired, volume):
    image, mask = acquired[volume], acquired["mask"]
    assert sharpness_score(image, image, mask) == pytest.approx(1.0, abs=1e-12)
    scores = [sharpness_score(_blur(image, s), image, mask) for s in (0.5, 0.75, 1.0, 2.0)]
    assert scores == sorted(scores, reverse=True) and scores[0] < 0.9 and scores[-1] < 0.2
    # the blocky synthesis of the seam test has lost detail too
    assert sharpness_score(_blocky(image, acquired["grid"]), image, mask) < 0.2


@pytest.mark.parametrize("volume", ["b0", "dwi"])
def test_noise_does_not_raise_sharpness(acquired, volume):
    image, mask = acquired[volume], acquired["mask"]
    rng = np.random.default_rng(2)
    sd = image[mask].std()
    for level in (0.1, 0.5, 1.0):
        noise = rng.normal(0, level * sd, image.shape)
        assert sharpness_score(image + noise, image, mask) <= 1.0 + 0.02
        blurred = _blur(image, 1.0)
        assert sharpness_score(blurred + noise, image, mask) <= sharpness_score(blurred, image, mask) + 0.02
        # while the plain high-frequency energy ratio would call the noisy copy sharper than the image
        hp = lambda x: (x - _blur(x, 1.0))[mask]  # noqa: E731
        assert np.sum(hp(image + noise) ** 2) > np.sum(hp(image) ** 2)


def test_scores_refuse_mismatched_inputs(acquired):
    image, mask = acquired["b0"], acquired["mask"]
    with pytest.raises(ValueError, match="shape"):
        sharpness_score(image[:-1], image, mask)
    with pytest.raises(ValueError, match="mask"):
        seam_score(image, image, acquired["grid"], mask[:-1])
    with pytest.raises(ValueError, match="patch"):
        PatchGrid(0)
    assert math.isnan(sharpness_score(np.ones_like(image), np.ones_like(image), mask))
