"""Registration and one-step resampling on real data (antspyx, TemplateFlow), function by function.

sub-xa30: b0 -> T1w rigid, T1w -> template SyN, composed into one transform per direction (.h5), on a
4 mm MNI152NLin6Asym grid. (The whole prepare stage on sub-toshiba and sub-xa30, including the b-vector
rotation, is tested through the app in test_workflow_real.py.)

Every ANTs call here runs with the process's temporary directory pointed at a private folder, which must
be empty at the end.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_phydiff.errors import NoInputError
from bids_phydiff.prep.b0 import write_b0_reference
from bids_phydiff.prep.grid import resample_to_grid
from bids_phydiff.prep.mask import write_brain_mask
from bids_phydiff.prep.registration import (
    register,
    register_b0_to_t1w,
    register_t1w_to_template,
    t1w_brain,
)
from bids_phydiff.prep.resample import resample_dwi, resample_mask, resample_series, to_native, write_transforms
from bids_phydiff.prep.template_files import TemplateError
from bids_phydiff.prep.templates import load_template, template_image

THREADS = 2
RESOLUTION = 4.0


@pytest.fixture(scope="module")
def system_tmp(tmp_path_factory):
    """The process's temporary directory for this module: a private, empty folder."""
    private = tmp_path_factory.mktemp("system_tmp")
    saved_tempdir, saved_env = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir = str(private)
    os.environ["TMPDIR"] = str(private)
    yield private
    tempfile.tempdir = saved_tempdir
    if saved_env is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = saved_env


@pytest.fixture(scope="module")
def grid(shared_templateflow):
    return load_template("MNI152NLin6Asym", RESOLUTION, home=shared_templateflow)


def _prepare_b0(stem: Path, wd: Path) -> tuple[Path, Path]:
    b0 = write_b0_reference(f"{stem}.nii.gz", f"{stem}.bval", wd / "b0.nii.gz")
    return b0, write_brain_mask(b0, wd / "b0_mask.nii.gz")


def _ncc(a, b, mask):
    a, b = a[mask] - a[mask].mean(), b[mask] - b[mask].mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


@pytest.fixture(scope="module")
def xa30(real_bids, grid, tmp_path_factory, system_tmp):
    sub = real_bids / "sub-xa30"
    stem = sub / "dwi" / "sub-xa30_dir-AP_dwi"
    t1w = sub / "anat" / "sub-xa30_T1w.nii.gz"
    wd = tmp_path_factory.mktemp("xa30")
    b0, mask = _prepare_b0(stem, wd)
    to_template = register_t1w_to_template(t1w, grid, wd, threads=THREADS, seed=0)
    brain, brain_mask = t1w_brain(t1w, to_template, grid, wd, THREADS)
    to_t1w = register_b0_to_t1w(b0, mask, brain, wd, threads=THREADS, seed=0)
    chain = to_t1w.chain.then(to_template.chain)
    forward, inverse = write_transforms(chain, wd / "from-dwi_to-tpl_xfm.h5", wd / "from-tpl_to-dwi_xfm.h5", wd,
                                        THREADS)
    dwi = resample_dwi(f"{stem}.nii.gz", forward, grid, wd / "dwi_tpl.nii.gz", wd, THREADS)
    return {"stem": stem, "t1w": t1w, "b0": b0, "mask": mask, "brain": brain, "brain_mask": brain_mask,
            "forward": forward, "inverse": inverse, "dwi": dwi, "chain": chain, "wd": wd}


def test_xa30_through_its_t1w_lands_on_the_template(xa30, grid):
    img = nib.load(xa30["dwi"])
    assert img.shape == grid.shape + (21,) and np.allclose(img.affine, grid.affine)
    assert len(xa30["chain"].forward) == 3  # warp, affine (T1w -> template), rigid (b0 -> T1w)
    data = img.get_fdata(dtype=np.float32)
    brain = template_image(grid, "mask")
    t1 = template_image(grid, "t1w")
    # the mean DWI (b = 2500) has a T1-like contrast: it must match the template T1w, and far better than
    # the same image placed by its scanner coordinates alone
    registered = _ncc(data[..., 1:].mean(-1), t1, brain)
    native_mean = xa30["wd"] / "mean_dwi_native.nii.gz"
    src = nib.load(f"{xa30['stem']}.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(src.dataobj, dtype=np.float32)[..., 1:].mean(-1), src.affine), str(native_mean))
    unregistered = _ncc(resample_to_grid(native_mean, grid), t1, brain)
    print(f"NCC with the template T1w: registered {registered:.3f}, scanner coordinates {unregistered:.3f}")
    assert registered > 0.3 and registered > unregistered + 0.15
    # the subject's brain mask lands on the template's
    warped = resample_mask(xa30["mask"], [xa30["forward"]], grid, xa30["wd"] / "mask_tpl.nii.gz", xa30["wd"], THREADS)
    m = np.asarray(nib.load(warped).dataobj) > 0
    dice = 2 * (m & brain).sum() / (m.sum() + brain.sum())
    print(f"brain mask Dice with the template's: {dice:.3f}")
    assert dice > 0.8


def test_t1w_brain_extraction_is_plausible(xa30):
    img = nib.load(xa30["brain_mask"])
    ml = (np.asarray(img.dataobj) > 0).sum() * np.prod(img.header.get_zooms()[:3]) / 1000
    assert 1000 < ml < 2200


def test_transforms_round_trip(xa30, grid, system_tmp):
    """The .h5 transforms load with ants.read_transform; b0 -> template -> DWI grid gives the b0 back."""
    from bids_phydiff.prep.ants_runtime import ants_session

    wd = xa30["wd"]
    with ants_session(wd) as ants:
        assert ants.read_transform(str(xa30["forward"])).type == "CompositeTransform"
        assert ants.read_transform(str(xa30["inverse"])).type == "CompositeTransform"
    in_template = resample_series(xa30["b0"], xa30["forward"], grid, wd / "b0_tpl.nii.gz", wd, THREADS)
    back = to_native(in_template, xa30["inverse"], f"{xa30['stem']}.nii.gz", wd / "b0_back.nii.gz", wd, THREADS)
    original = nib.load(xa30["b0"]).get_fdata()
    returned = nib.load(back)
    assert returned.shape == original.shape and np.allclose(returned.affine, nib.load(xa30["b0"]).affine)
    mask = np.asarray(nib.load(xa30["mask"]).dataobj) > 0
    corr = np.corrcoef(original[mask], returned.get_fdata()[mask])[0, 1]
    print(f"b0 -> template -> DWI grid: correlation {corr:.3f}")
    assert corr > 0.9


def test_bspline_resampling_is_clipped_at_zero(xa30, grid):
    wd = xa30["wd"]
    linear = nib.load(resample_series(xa30["b0"], xa30["forward"], grid, wd / "b0_lin.nii.gz", wd, THREADS)).get_fdata()
    spline = nib.load(resample_series(xa30["b0"], xa30["forward"], grid, wd / "b0_spl.nii.gz", wd, THREADS,
                                      interpolation="bspline")).get_fdata()
    assert spline.min() >= 0.0
    inside = template_image(grid, "mask")
    assert np.corrcoef(linear[inside], spline[inside])[0, 1] > 0.97


def test_brain_only_template_needs_a_t1w_mask(xa30, shared_templateflow, tmp_path):
    brain_only = load_template("MNI152NLin2009cAsym", RESOLUTION, home=shared_templateflow)
    assert not brain_only.has_head_t1w
    with pytest.raises(TemplateError, match="whole-head"):
        register_t1w_to_template(xa30["t1w"], brain_only, tmp_path)


@pytest.mark.parametrize("seed", [0, 3])  # 0: the app's default, which ANTs itself reads as "from the clock"
def test_registration_reproducible_with_one_thread(xa30, seed):
    """Same seed, one thread: the same transform bit for bit (in this process or in a child process,
    depending on the thread count this process's ITK started with)."""
    digests = []
    for k in range(2):
        wd = xa30["wd"] / f"repeat{seed}-{k}"
        reg = register_b0_to_t1w(xa30["b0"], xa30["mask"], xa30["brain"], wd, threads=1, seed=seed)
        digests.append(hashlib.sha256(reg.chain.forward[0].read_bytes()).hexdigest())
    assert digests[0] == digests[1]


def test_missing_input_is_named(tmp_path, xa30):
    with pytest.raises(NoInputError, match="missing_b0"):
        register(tmp_path / "missing_b0.nii.gz", xa30["t1w"], "rigid", tmp_path)
    with pytest.raises(ValueError, match="kind"):
        register(xa30["b0"], xa30["t1w"], "elastic", tmp_path)


def test_nothing_left_in_the_temporary_directory(system_tmp, xa30):
    assert sorted(os.listdir(system_tmp)) == []
