"""b0 reference and brain mask on the real DWI and on synthetic phantoms."""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from bids_phydiff.errors import InputDataError
from bids_phydiff.prep.b0 import NoB0Error, b0_reference, write_b0_reference
from bids_phydiff.prep.mask import MaskError, brain_mask, write_brain_mask

RUNS = [
    ("sub-xa30", "sub-xa30_dir-AP"),
    ("sub-xa30", "sub-xa30_dir-PA"),
    ("sub-toshiba", "sub-toshiba_acq-ortho"),
    ("sub-toshiba", "sub-toshiba_acq-sag30"),
    ("sub-toshiba", "sub-toshiba_acq-all20"),
]


def _run(real_bids, sub, stem):
    base = real_bids / sub / "dwi" / f"{stem}_dwi"
    return base.with_suffix(".nii.gz"), base.with_suffix(".bval")


def test_b0_reference_is_the_mean_of_the_b0_volumes(real_bids, tmp_path):
    dwi, bval = _run(real_bids, "sub-xa30", "sub-xa30_dir-AP")
    img = nib.load(dwi)
    data = np.asarray(img.dataobj, dtype=np.float32)
    # the real run (one b0 volume)
    out = write_b0_reference(dwi, bval, tmp_path / "ref.nii.gz")
    ref = nib.load(out)
    np.testing.assert_allclose(ref.get_fdata(), data[..., 0], rtol=1e-6)
    np.testing.assert_allclose(ref.affine, img.affine)
    # the same data relabelled so that three volumes count as b0 (b = 0, 5 and 50 <= 50 s/mm^2)
    bvals = np.loadtxt(bval)
    bvals[[4, 9]] = [5, 50]
    (tmp_path / "multi.bval").write_text(" ".join(f"{b:g}" for b in bvals) + "\n")
    multi = write_b0_reference(dwi, tmp_path / "multi.bval", tmp_path / "multi_ref.nii.gz")
    expected = data[..., [0, 4, 9]].mean(axis=-1)
    np.testing.assert_allclose(nib.load(multi).get_fdata(), expected, rtol=1e-5)
    np.testing.assert_allclose(b0_reference(data, bvals), expected, rtol=1e-5)
    # with a lower threshold only b = 0 and 5 remain
    np.testing.assert_allclose(b0_reference(data, bvals, threshold=10), data[..., [0, 4]].mean(-1), rtol=1e-5)


def test_no_b0_volume_is_an_error_naming_the_file(real_bids, tmp_path):
    dwi, bval = _run(real_bids, "sub-xa30", "sub-xa30_dir-AP")
    bvals = np.loadtxt(bval)
    bvals[0] = 2500
    (tmp_path / "nob0.bval").write_text(" ".join(f"{b:g}" for b in bvals) + "\n")
    out = tmp_path / "ref.nii.gz"
    with pytest.raises(NoB0Error, match=str(dwi)):
        write_b0_reference(dwi, tmp_path / "nob0.bval", out)
    assert not out.exists() and not list(tmp_path.glob("*.part*"))
    with pytest.raises(InputDataError, match="volumes"):
        write_b0_reference(dwi, _short_bval(tmp_path, bvals), out)


def _short_bval(tmp_path, bvals):
    path = tmp_path / "short.bval"
    path.write_text(" ".join(f"{b:g}" for b in bvals[:-1]) + "\n")
    return path


@pytest.mark.parametrize("sub, stem", RUNS)
def test_brain_mask_on_real_b0(real_bids, tmp_path, sub, stem):
    dwi, bval = _run(real_bids, sub, stem)
    ref = write_b0_reference(dwi, bval, tmp_path / "b0.nii.gz")
    out = write_brain_mask(ref, tmp_path / "mask.nii.gz")
    img = nib.load(out)
    assert img.get_data_dtype() == np.uint8 and np.allclose(img.affine, nib.load(ref).affine)
    mask = np.asarray(img.dataobj) > 0
    _, n_parts = ndimage.label(mask)
    assert n_parts == 1  # one connected blob
    assert np.array_equal(ndimage.binary_fill_holes(mask), mask)  # without holes
    volume_ml = mask.sum() * np.prod(img.header.get_zooms()[:3]) / 1000
    assert 900 < volume_ml < 2000
    b0 = nib.load(ref).get_fdata()
    # the brain is bright, the background dark
    assert np.median(b0[mask]) > 5 * np.median(b0[~ndimage.binary_dilation(mask, iterations=3)])


def _ellipsoid_phantom(seed=0):
    """A noisy b0-like phantom: a bright ellipsoid brain with darker ventricles, a thin scalp, Rician noise."""
    rng = np.random.default_rng(seed)
    shape = (48, 56, 40)
    idx = np.indices(shape, dtype=np.float64)
    centre = np.array(shape)[:, None, None, None] / 2
    r = np.sqrt((((idx - centre) / np.array([17, 21, 14])[:, None, None, None]) ** 2).sum(0))
    brain = r < 1.0
    scalp = (r > 1.15) & (r < 1.25)
    ventricle = np.sqrt((((idx - centre) / np.array([3, 6, 3])[:, None, None, None]) ** 2).sum(0)) < 1
    signal = np.where(brain, 600.0, 0.0) + np.where(ventricle, 900.0, 0.0) + np.where(scalp, 250.0, 0.0)
    sigma = 30.0
    noisy = np.sqrt((signal + rng.normal(0, sigma, shape)) ** 2 + rng.normal(0, sigma, shape) ** 2)
    return noisy.astype(np.float32), brain


def test_brain_mask_on_a_synthetic_phantom():
    b0, brain = _ellipsoid_phantom()
    mask = brain_mask(b0, (3.0, 3.0, 3.0))
    dice = 2 * (mask & brain).sum() / (mask.sum() + brain.sum())
    assert dice > 0.93
    assert not (mask & ~ndimage.binary_dilation(brain, iterations=2)).any()  # the scalp is left out


def test_brain_mask_on_the_phantom_generator(tmp_path):
    """The phantom DWI the generator writes, against its true brain."""
    out = tmp_path / "phantom"
    proc = subprocess.run([sys.executable, "-m", "bids_phydiff.phantom", str(out), "--subjects", "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-500:]
    dwi = next((out / "sub-01" / "dwi").glob("*_dwi.nii.gz"))
    truth = out / "sourcedata" / "truth" / "sub-01" / "tissue_dseg.nii.gz"
    ref = write_b0_reference(dwi, dwi.with_name(dwi.name.replace(".nii.gz", ".bval")), tmp_path / "b0.nii.gz")
    mask = np.asarray(nib.load(write_brain_mask(ref, tmp_path / "mask.nii.gz")).dataobj) > 0
    brain = np.asarray(nib.load(truth).dataobj) > 0
    assert brain.shape == mask.shape
    assert 2 * (mask & brain).sum() / (mask.sum() + brain.sum()) > 0.85


def test_constant_b0_has_no_mask(tmp_path):
    path = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.full((10, 10, 10), 5.0, dtype=np.float32), np.eye(4)), str(path))
    out = tmp_path / "mask.nii.gz"
    with pytest.raises(MaskError, match=str(path)):
        write_brain_mask(path, out)
    assert not out.exists()
