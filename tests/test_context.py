"""Context maps of q-space completion (issue 19): dipy's fits of a phantom run, in the b-vectors' frame."""

from __future__ import annotations

import numpy as np
import pytest
from dipy.core.gradients import gradient_table
from dipy.core.sphere import Sphere
from dipy.reconst.dti import TensorModel
from dipy.reconst.shm import sf_to_sh, sh_to_sf
from scipy.spatial.transform import Rotation

from bids_phydiff.phantom.deformation import Deformation
from bids_phydiff.phantom.signal import TissueModel, add_rician_noise
from bids_phydiff.phantom.template import template_grid
from bids_phydiff.phantom.truth import render_truth
from bids_phydiff.prep.context import (DIFFUSIVITY_SCALE, SH_COEFFICIENTS, SH_SMOOTH, context_channels, context_maps,
                                       fit_tensor)
from bids_phydiff.prep.gradients import multishell_scheme

SHELLS = (1000.0, 2000.0, 3000.0)


@pytest.fixture(scope="module")
def run():
    """An 8 mm phantom subject, 3 shells x 20 directions, white-matter SNR 50."""
    truth = render_truth(template_grid(8), Deformation.identity(), TissueModel())
    table = multishell_scheme(list(SHELLS), 20, n_b0=2, seed=1)
    clean = truth.signal(table.bvals, table.bvecs)
    dwi = add_rician_noise(clean, TissueModel().s0_wm / 50, np.random.default_rng(0))
    return {"truth": truth, "bvals": table.bvals, "bvecs": table.bvecs, "dwi": dwi, "clean": clean,
            "mask": truth.s0 > 1.0}


def _pure_isotropic(run):
    """Voxels filled by one isotropic compartment (mono-exponential, direction-free) and its diffusivity."""
    truth = run["truth"]
    iso = [truth.compartments.index(c) for c in ("WM_iso", "GM", "CSF")]
    pure = run["mask"] & (truth.fractions.max(-1) > 0.999) & np.isin(truth.fractions.argmax(-1), iso)
    assert pure.sum() > 300
    return pure, truth.axial[truth.fractions.argmax(-1)[pure]]


def _shell(run, b):
    keep = (run["bvals"] <= 50) | (run["bvals"] == b)
    return run["dwi"][..., keep], run["bvals"][keep], run["bvecs"][keep]


def test_dti_maps_are_dipys_tensor_fit_of_the_shell_scaled_to_order_one(run):
    mask, bvals, bvecs = run["mask"], run["bvals"], run["bvecs"]
    maps = context_maps("dti", run["dwi"], bvals, bvecs, mask, shells=[1000], scale=600.0)
    assert maps.shape == mask.shape + (context_channels("dti"),) == mask.shape + (7,) and maps.dtype == np.float32
    dwi, b, g = _shell(run, 1000)
    fit = TensorModel(gradient_table(b, bvecs=g), return_S0_hat=True).fit(dwi, mask=mask)
    np.testing.assert_allclose(maps[mask][:, :6], fit.lower_triangular()[mask] * 1e3, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(maps[mask][:, 6], fit.S0_hat[mask] / 600.0, rtol=1e-4)
    # O(1) inputs: diffusivities in um^2/ms (free water 3, plus noise), S0 about 1
    assert np.abs(maps[mask]).max() < 5.0 and 0.5 < np.median(maps[mask][:, 6]) < 2.0
    # where one isotropic compartment fills the voxel the tensor is its true diffusivity times the identity
    pure, diffusivity = _pure_isotropic(run)
    clean = context_maps("dti", run["clean"], bvals, bvecs, mask, shells=[1000])
    np.testing.assert_allclose(clean[pure][:, [0, 2, 5]], np.repeat(diffusivity[:, None], 3, 1) * DIFFUSIVITY_SCALE,
                               rtol=1e-3)
    np.testing.assert_allclose(clean[pure][:, [1, 3, 4]], 0.0, atol=1e-4)


def test_sh4_maps_are_dipys_sh_fit_of_the_normalised_shell(run):
    mask, bvals, bvecs = run["mask"], run["bvals"], run["bvecs"]
    maps = context_maps("sh4", run["dwi"], bvals, bvecs, mask, shells=[2000])
    assert maps.shape == mask.shape + (SH_COEFFICIENTS,) and maps.dtype == np.float32
    b0 = run["dwi"][..., bvals <= 50].mean(-1)
    inside = mask & (b0 > 0)
    shell = bvals == 2000
    expected = sf_to_sh(run["dwi"][inside][:, shell] / b0[inside][:, None], Sphere(xyz=bvecs[shell]),
                        sh_order_max=4, basis_type="descoteaux07", legacy=False, smooth=SH_SMOOTH)
    np.testing.assert_allclose(maps[inside], expected, rtol=1e-4, atol=1e-6)
    # l = 0 is sqrt(4 pi) times the direction-averaged attenuation (noise-free, one isotropic compartment)
    pure, diffusivity = _pure_isotropic(run)
    clean = context_maps("sh4", run["clean"], bvals, bvecs, mask, shells=[2000])
    np.testing.assert_allclose(clean[pure][:, 0], np.sqrt(4 * np.pi) * np.exp(-2000 * diffusivity), rtol=1e-3)
    np.testing.assert_allclose(clean[pure][:, 1:], 0.0, atol=1e-4)
    # several shells: 15 coefficients each, in increasing b
    both = context_maps("sh4", run["dwi"], bvals, bvecs, mask, shells=[3000, 2000])
    assert both.shape[-1] == 2 * SH_COEFFICIENTS
    np.testing.assert_allclose(both[..., :SH_COEFFICIENTS], maps)


def test_a_shell_is_fitted_from_its_own_volumes_only(run):
    mask = run["mask"]
    dwi, b, g = _shell(run, 1000)
    alone = context_maps("dti", dwi, b, g, mask, scale=600.0)
    picked = context_maps("dti", run["dwi"], run["bvals"], run["bvecs"], mask, shells=[1000], scale=600.0)
    np.testing.assert_allclose(picked, alone, rtol=1e-5, atol=1e-6)
    whole = context_maps("dti", run["dwi"], run["bvals"], run["bvecs"], mask, scale=600.0)
    assert np.abs(whole - picked)[mask].max() > 0.05  # all shells: another (kurtosis-biased) tensor


def test_maps_follow_a_rotation_of_the_b_vectors(run):
    """The same signal with its b-vectors written in a frame rotated by R: D' = R D R^T, S0 unchanged, and
    the SH function turns with the frame, f'(R g) = f(g)."""
    mask, bvals, bvecs, dwi = run["mask"], run["bvals"], run["bvecs"], run["dwi"]
    rot = Rotation.from_euler("zyx", [35, -20, 60], degrees=True).as_matrix()
    turned = bvecs @ rot.T
    tensor = fit_tensor(dwi, bvals, bvecs, mask, shells=[1000]).matrix()[mask]
    tensor_r = fit_tensor(dwi, bvals, turned, mask, shells=[1000]).matrix()[mask]
    np.testing.assert_allclose(tensor_r, rot @ tensor @ rot.T, atol=1e-9)
    dti, dti_r = (context_maps("dti", dwi, bvals, v, mask, shells=[1000], scale=600.0) for v in (bvecs, turned))
    np.testing.assert_allclose(dti_r[..., 6], dti[..., 6], rtol=1e-5)

    sh, sh_r = (context_maps("sh4", dwi, bvals, v, mask, shells=[1000]).astype(np.float64) for v in (bvecs, turned))
    points = np.random.default_rng(2).normal(size=(40, 3))
    probe = Sphere(xyz=points / np.linalg.norm(points, axis=1, keepdims=True))
    turned_probe = Sphere(xyz=probe.vertices @ rot.T)
    kw = {"sh_order_max": 4, "basis_type": "descoteaux07", "legacy": False}
    np.testing.assert_allclose(sh_to_sf(sh_r[mask], turned_probe, **kw), sh_to_sf(sh[mask], probe, **kw), atol=1e-5)
    assert np.abs(sh_r[mask] - sh[mask]).max() > 0.01  # the coefficients themselves do change


def test_masked_out_voxels_are_zero_in_every_channel(run):
    mask = run["mask"].copy()
    mask[:, :, : mask.shape[2] // 2] = False
    for kind in ("dti", "sh4"):
        maps = context_maps(kind, run["dwi"], run["bvals"], run["bvecs"], mask, shells=[1000])
        assert np.all(maps[~mask] == 0), kind
        assert np.all(np.any(maps[mask] != 0, axis=-1)), kind
    assert context_maps("none", run["dwi"], run["bvals"], run["bvecs"], mask).shape == mask.shape + (0,)


def test_a_missing_shell_or_b0_is_an_error_naming_it(run):
    mask, bvals, bvecs, dwi = run["mask"], run["bvals"], run["bvecs"], run["dwi"]
    with pytest.raises(ValueError, match="b = 1500 s/mm\\^2"):
        context_maps("dti", dwi, bvals, bvecs, mask, shells=[1500])
    weighted = bvals > 50
    with pytest.raises(ValueError, match="no b0 volume"):
        context_maps("sh4", dwi[..., weighted], bvals[weighted], bvecs[weighted], mask)
    with pytest.raises(ValueError, match="context must be one of"):
        context_maps("dki", dwi, bvals, bvecs, mask)
