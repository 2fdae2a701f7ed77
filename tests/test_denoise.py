"""Optional denoising before prepare (``--denoise``): the dipy methods on a phantom with known noise-free
signal, the file writer, and one prepare run through ``run.py`` that records it in the sidecar."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import dipy
import nibabel as nib
import numpy as np
import pytest

from bids_phydiff.errors import InputDataError
from bids_phydiff.phantom import PhantomConfig, generate
from bids_phydiff.phantom.truth import noise_free_signal
from bids_phydiff.prep.denoise import METHODS, denoise, denoising_metadata, mppca_radius, write_denoised
from bids_phydiff.prep.gradients import read_fsl

from conftest import REPO

CROP = (slice(10, 26), slice(12, 28), slice(10, 22))
"""A 16 x 16 x 12 block inside the phantom's brain: keeps MP-PCA under a second."""


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("denoise") / "bids",
                    PhantomConfig(subjects=1, resolution=4.0, seed=5, without_t1w=("01",)))


@pytest.fixture(scope="module")
def block(phantom):
    """The noisy block, its b-values and its noise-free signal (the phantom's truth)."""
    dwi = phantom.dwi_files("01")[0]
    table = read_fsl(dwi.with_name("sub-01_dwi.bval"), dwi.with_name("sub-01_dwi.bvec"))
    noisy = nib.load(dwi).get_fdata(dtype=np.float32)[CROP]
    truth = noise_free_signal(phantom.truth_dir, "01", table.bvals, table.bvecs)[CROP]
    assert (truth[..., 0] > 0).all()  # all brain
    return noisy, table.bvals, truth


@pytest.mark.parametrize("method, gain", [("mppca", 0.5), ("patch2self", 0.85)])
def test_denoising_brings_the_signal_closer_to_the_truth(block, method, gain):
    noisy, bvals, truth = block
    clean = denoise(noisy, bvals, method)
    assert clean.shape == noisy.shape and clean.dtype == np.float32
    assert not np.allclose(clean, noisy)
    rmse = lambda x: float(np.sqrt(np.mean((x - truth) ** 2)))  # noqa: E731
    assert rmse(clean) < gain * rmse(noisy), (rmse(clean), rmse(noisy))
    assert denoise(noisy.astype(np.float64), bvals, method).dtype == np.float64


def test_bad_arguments_are_refused(block):
    noisy, bvals, _ = block
    with pytest.raises(ValueError, match="not one of"):
        denoise(noisy, bvals, "nlmeans")
    with pytest.raises(ValueError, match="37 b-values for 38 volumes"):
        denoise(noisy, bvals[:-1], "mppca")
    with pytest.raises(ValueError, match="4D series"):
        denoise(noisy[..., 0], bvals, "mppca")


def test_mppca_patches_hold_at_least_as_many_voxels_as_volumes():
    assert mppca_radius(38) == 2 and mppca_radius(125) == 2 and mppca_radius(126) == 3 and mppca_radius(343) == 3
    assert mppca_radius(344) == 4
    for n in (10, 100, 500):
        assert (2 * mppca_radius(n) + 1) ** 3 >= n
    meta = denoising_metadata("mppca", 38)
    assert meta["Software"] == "dipy" and meta["SoftwareVersion"] == dipy.__version__
    assert meta["Parameters"] == {"PatchRadius": 2}
    assert set(METHODS) == {"mppca", "patch2self"}


def test_the_file_writer_keeps_the_grid_and_names_a_bad_file(phantom, tmp_path):
    dwi = phantom.dwi_files("01")[0]
    img = nib.load(dwi)
    small = tmp_path / "sub-01_dwi.nii.gz"
    nib.Nifti1Image(np.asarray(img.dataobj)[CROP], img.affine, img.header).to_filename(small)
    out = write_denoised(small, dwi.with_name("sub-01_dwi.bval"), tmp_path / "denoised.nii.gz", "patch2self")
    result = nib.load(out)
    assert result.shape == (16, 16, 12, 38) and np.allclose(result.affine, img.affine)
    assert result.get_data_dtype() == np.float32
    bad = tmp_path / "bad.bval"
    bad.write_text("0 1000\n")
    with pytest.raises(InputDataError, match="bad.bval"):
        write_denoised(small, bad, tmp_path / "x.nii.gz", "mppca")


def test_prepare_denoises_first_and_says_so_in_the_sidecar(phantom, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    env = dict(os.environ, TEMPLATEFLOW_HOME=str(phantom.templateflow_home))
    proc = subprocess.run([sys.executable, str(REPO / "run.py"), phantom.bids_dir, out, "participant", "-w", work,
                           "--template", "Phantom", "--output-resolution", "4", "--skip-bids-validation",
                           "--hmc", "none", "--denoise", "patch2self"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    denoised = list(work.rglob("denoise/denoised.nii.gz"))
    assert len(denoised) == 1
    raw = nib.load(phantom.dwi_files("01")[0])
    assert nib.load(denoised[0]).shape == raw.shape
    assert not np.allclose(nib.load(denoised[0]).get_fdata(), raw.get_fdata())
    folder = out / "sub-01" / "dwi"
    prepared = nib.load(folder / "sub-01_space-Phantom_res-04_desc-preproc_dwi.nii.gz")
    assert prepared.shape[3] == raw.shape[3] and prepared.get_data_dtype() == np.float32
    meta = json.loads((folder / "sub-01_space-Phantom_res-04_desc-preproc_dwi.json").read_text())
    raw_meta = json.loads(phantom.dwi_files("01")[0].with_name("sub-01_dwi.json").read_text())
    assert meta["Denoising"] == denoising_metadata("patch2self", raw.shape[3])
    assert meta["InputType"] == "raw" and meta["HeadMotionCorrection"] == "none"
    assert meta["EchoTime"] == raw_meta["EchoTime"]  # the acquisition fields are kept
    assert "denoised first (patch2self" in (out / "sub-01.html").read_text()
