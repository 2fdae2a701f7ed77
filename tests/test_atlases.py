"""ADC atlas (paper Eq. 4) and tract atlases on a model grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from bids_phydiff.prep.adc import AdcAccumulator, adc_atlas_from_files
from bids_phydiff.prep.gradients import GradientTable, uniform_directions, write_fsl
from bids_phydiff.prep.tracts import load_tract_atlas, to_channels


def _run(shape, diffusivity, bvals, s0=1000.0, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    data = np.stack([s0 * np.exp(-b * diffusivity) for b in bvals], axis=-1)
    return data + noise * rng.standard_normal(data.shape)


def test_adc_atlas_recovers_diffusivity_and_averages_runs():
    shape = (6, 5, 4)
    bvals = np.array([0, 0, 1000, 1000, 2000, 2000, 3000])
    d1 = np.full(shape, 0.7e-3)
    d1[:3] = 3.0e-3  # "CSF" half
    d2 = d1 * 1.2
    acc = AdcAccumulator(np.array([1000.0, 2000.0, 3000.0]), shape)
    mask = np.ones(shape, bool)
    mask[0, 0, 0] = False
    acc.add(_run(shape, d1, bvals), bvals, mask)
    acc.add(_run(shape, d2, bvals), bvals, mask)
    atlas = acc.atlas()
    assert atlas.shape == shape + (3,)
    expected = 0.5 * (d1 + d2)
    for s in range(3):
        np.testing.assert_allclose(atlas[..., s][mask], expected[mask], rtol=1e-5)
    assert np.all(atlas[0, 0, 0] == 0)  # outside every mask


def test_adc_is_clipped_at_zero_where_signal_rises():
    shape = (3, 3, 3)
    bvals = np.array([0, 1000])
    data = np.stack([np.full(shape, 100.0), np.full(shape, 120.0)], axis=-1)  # Sb > S0: negative ADC
    acc = AdcAccumulator(np.array([1000.0]), shape)
    acc.add(data, bvals, np.ones(shape, bool))
    assert np.all(acc.atlas() == 0)


def test_adc_atlas_from_files(tmp_path):
    shape = (5, 5, 3)
    bvals = np.array([0, 1000, 1000, 1000])
    bvecs = np.zeros((4, 3))
    bvecs[1:] = uniform_directions(3)
    runs = []
    for i, d in enumerate((1e-3, 2e-3)):
        dwi = tmp_path / f"r{i}_dwi.nii.gz"
        nib.Nifti1Image(_run(shape, np.full(shape, d), bvals).astype(np.float32), np.eye(4)).to_filename(dwi)
        write_fsl(GradientTable(bvals, bvecs), tmp_path / f"r{i}_dwi.bval", tmp_path / f"r{i}_dwi.bvec")
        mask = tmp_path / f"r{i}_mask.nii.gz"
        nib.Nifti1Image(np.ones(shape, np.uint8), np.eye(4)).to_filename(mask)
        runs.append((dwi, tmp_path / f"r{i}_dwi.bval", mask))
    atlas, shells, affine = adc_atlas_from_files(runs)
    assert list(shells) == [1000.0]
    np.testing.assert_allclose(atlas[..., 0], 1.5e-3, rtol=1e-5)
    np.testing.assert_array_equal(affine, np.eye(4))


def test_label_map_to_channels_and_bad_input():
    labels = np.zeros((4, 4, 4), int)
    labels[1, 1, 1] = 2
    labels[2, 2, 2] = 42
    probs = to_channels(labels, 42)
    assert probs.shape == (4, 4, 4, 42)
    assert probs[1, 1, 1, 1] == 1 and probs[2, 2, 2, 41] == 1 and probs.sum() == 2
    with pytest.raises(ValueError, match="exceeds"):
        to_channels(labels, 10)


def test_xtract_labels_resampled_to_a_coarser_grid_keep_tract_volumes(xtract_dir):
    path = xtract_dir / "tpl-MNI152NLin6Asym_res-02_atlas-XTRACT_dseg.nii.gz"
    img = nib.load(str(path))
    labels = np.asarray(img.dataobj)
    target_affine = img.affine.copy()
    target_affine[:3, :3] *= 2.0  # 4 mm grid over the same field of view
    target_shape = tuple(int(np.ceil(s / 2)) for s in labels.shape)
    probs = load_tract_atlas(path, target_shape, target_affine, n_tracts=42)
    assert probs.shape == target_shape + (42,)
    assert probs.min() >= 0 and probs.max() <= 1
    assert probs.sum(axis=-1).max() <= 1.0 + 1e-5
    # each tract's volume (ml) is kept within 15 % for tracts of a reasonable size
    for k in range(1, 43):
        before = (labels == k).sum() * 8.0
        if before < 4000:
            continue
        after = probs[..., k - 1].sum() * 64.0
        assert abs(after - before) / before < 0.15, (k, before, after)
