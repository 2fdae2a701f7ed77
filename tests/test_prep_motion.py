"""Motion parameters, framewise displacement, confounds, and per-volume transforms through resampling and
b-vector rotation (prep/motion.py, prep/hmc.py, prep/resample.py, prep/gradients.py)."""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from bids_phydiff.prep.gradients import GradientTable, fsl_to_world, read_fsl, write_fsl, write_reoriented_fsl
from bids_phydiff.prep.motion import (
    FD_COLUMN,
    PARAMETERS,
    ants_to_world,
    confounds_sidecar,
    drift_anchor,
    framewise_displacement,
    grid_centre,
    parameters_of,
    read_confounds,
    rigid_matrix,
    rigid_parameters,
    rotation_matrix,
    world_to_ants,
    write_confounds,
)

RNG = np.random.default_rng(7)


def test_parameters_round_trip_about_any_centre():
    for _ in range(20):
        params = np.concatenate([RNG.uniform(-5, 5, 3), RNG.uniform(-0.3, 0.3, 3)])
        centre = RNG.uniform(-50, 50, 3)
        np.testing.assert_allclose(rigid_parameters(rigid_matrix(params, centre), centre), params, atol=1e-12)


def test_rotation_convention_is_right_handed_about_world_axes():
    # +90 degrees about z turns +x into +y; about x turns +y into +z
    np.testing.assert_allclose(rotation_matrix([0, 0, np.pi / 2]) @ [1, 0, 0], [0, 1, 0], atol=1e-12)
    np.testing.assert_allclose(rotation_matrix([np.pi / 2, 0, 0]) @ [0, 1, 0], [0, 0, 1], atol=1e-12)
    # the centre stays where it is under a pure rotation about it
    centre = np.array([10.0, -20.0, 5.0])
    m = rigid_matrix([0, 0, 0, 0.1, 0.2, 0.3], centre)
    np.testing.assert_allclose(m[:3, :3] @ centre + m[:3, 3], centre, atol=1e-12)


def test_framewise_displacement_is_powers():
    params = np.zeros((3, 6))
    params[1, 0] = 1.0  # 1 mm along x
    params[2, 0], params[2, 5] = 1.0, 0.01  # then 0.01 rad about z: 0.5 mm on a 50 mm sphere
    np.testing.assert_allclose(framewise_displacement(params), [0.0, 1.0, 0.5])
    assert framewise_displacement(np.zeros((1, 6))).tolist() == [0.0]


def test_confounds_tsv_round_trip_and_sidecar_lists_volumes_above_threshold(tmp_path):
    params = np.zeros((4, 6))
    params[2, 1] = 1.5
    tsv = write_confounds(params, tmp_path / "c.tsv")
    columns = read_confounds(tsv)
    assert list(columns) == [*PARAMETERS, FD_COLUMN]
    np.testing.assert_allclose(parameters_of(columns), params)
    np.testing.assert_allclose(columns[FD_COLUMN], [0, 0, 1.5, 1.5])
    meta = confounds_sidecar(1.0, params, "test")
    assert meta["VolumesAboveThreshold"] == [2, 3] and meta["MaxFramewiseDisplacement"] == 1.5
    assert meta["trans_x"]["Units"] == "mm" and meta["rot_z"]["Units"] == "rad"


def test_drift_anchor_interpolates_the_b0_positions_over_the_shell():
    centre = np.array([4.0, -10.0, 20.0])
    start, end = np.zeros(6), np.array([2.0, -1.0, 0.5, 0.02, 0.0, -0.01])
    b0s = [rigid_matrix(start, centre), rigid_matrix(end, centre)]
    # b0s at volumes 0 and 10, the shell in between: the head drifted linearly, on average halfway
    mid = rigid_parameters(drift_anchor(b0s, [0, 10], range(1, 10), centre), centre)
    np.testing.assert_allclose(mid, end / 2, atol=1e-9)
    # volumes after the last b0 stay at its position; one b0: the shell is where that b0 was
    np.testing.assert_allclose(rigid_parameters(drift_anchor(b0s, [0, 10], [11, 12], centre), centre), end, atol=1e-9)
    np.testing.assert_allclose(drift_anchor(b0s[1:], [0], [1, 2, 3], centre), b0s[1], atol=1e-9)


def test_grid_centre():
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-10, -20, -30]
    np.testing.assert_allclose(grid_centre(affine, (11, 21, 31)), [0, 0, 0])


def _ants():
    return pytest.importorskip("ants")


def test_ants_conversion_matches_how_ants_moves_points():
    ants = _ants()
    world = rigid_matrix([1.0, -2.0, 3.0, 0.05, -0.1, 0.2], centre=[5.0, 6.0, 7.0])
    matrix, offset = world_to_ants(world)
    tx = ants.create_ants_transform(transform_type="AffineTransform", dimension=3, matrix=matrix,
                                    translation=offset, center=[0.0, 0.0, 0.0])
    ras = np.array([10.0, -4.0, 2.0])
    lps_out = np.asarray(tx.apply_to_point(list(ras * [-1, -1, 1])))
    np.testing.assert_allclose(lps_out * [-1, -1, 1], world[:3, :3] @ ras + world[:3, 3], atol=1e-6)
    np.testing.assert_allclose(ants_to_world(matrix, offset), world, atol=1e-12)


def _blob(shape=(24, 26, 22), centre=(11.0, 13.5, 10.0)) -> np.ndarray:
    idx = np.indices(shape).astype(float)
    r2 = sum(((idx[k] - centre[k]) / s) ** 2 for k, s in enumerate((7.0, 9.0, 6.0)))
    bar = np.exp(-((idx[0] - centre[0] - 3) ** 2 + (idx[2] - centre[2]) ** 2) / 4.0)
    return 100 * np.exp(-r2) + 60 * bar * (r2 < 1.5)


def _write_series(path, volumes, affine):
    nib.Nifti1Image(np.stack(volumes, axis=-1).astype(np.float32), affine).to_filename(path)
    return path


def test_estimate_motion_recovers_known_shifts_and_turns(tmp_path):
    """Volumes of a smooth blob moved by known rigid maps (two b0, four b=1000 with a darker contrast).

    The motion is independent from volume to volume, so the shell's mean position is known only to a
    registration to the b0s (here a pure contrast scale, where that registration is exact)."""
    ants = _ants()
    from bids_phydiff.prep.hmc import HmcConfig, estimate_motion
    from bids_phydiff.prep.mask import write_brain_mask

    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-23.0, -25.0, -21.0]  # grid centre at the origin
    still = _blob()
    base = tmp_path / "still.nii.gz"
    nib.Nifti1Image(still.astype(np.float32), affine).to_filename(base)
    truth = np.zeros((6, 6))
    truth[1:] = np.column_stack([RNG.uniform(-2, 2, (5, 3)), np.deg2rad(RNG.uniform(-3, 3, (5, 3)))])
    fixed = ants.image_read(str(base))
    volumes = []
    for k, params in enumerate(truth):
        matrix, offset = world_to_ants(rigid_matrix(params))
        tx = ants.create_ants_transform(transform_type="AffineTransform", dimension=3, matrix=matrix,
                                        translation=offset, center=[0.0, 0.0, 0.0])
        moved = ants.apply_transforms(fixed, fixed, [ants.write_transform(tx, str(tmp_path / f"t{k}.mat")) or
                                                     str(tmp_path / f"t{k}.mat")], interpolator="bSpline",
                                      whichtoinvert=[True]).numpy()
        volumes.append(moved if k in (0, 3) else 0.5 * moved)
    dwi = _write_series(tmp_path / "dwi.nii.gz", volumes, affine)
    bvals = np.array([0, 1000, 1000, 0, 1000, 1000])
    bvecs = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0], [0, 0, 1], [0.6, 0.8, 0]], dtype=float)
    write_fsl(GradientTable(bvals, bvecs), tmp_path / "dwi.bval", tmp_path / "dwi.bvec")
    mask = write_brain_mask(base, tmp_path / "mask.nii.gz")
    # a 24-voxel blob: its native 2 mm grid, not the 4 mm pyramid that suits a brain-sized 2 mm series
    config = HmcConfig(anchor="registration", finest_mm=0)
    found = estimate_motion(dwi, tmp_path / "dwi.bval", mask, tmp_path / "hmc", config=config)
    assert len(found.transforms) == 6 and all(p.is_file() for p in found.transforms)
    assert found.fd[0] == 0 and found.parameters.shape == (6, 6)
    np.testing.assert_allclose(found.parameters[:, :3], truth[:, :3], atol=0.25)
    np.testing.assert_allclose(np.degrees(found.parameters[:, 3:]), np.degrees(truth[:, 3:]), atol=1.0)  # a smooth blob: weak in rotation
    # with one ITK thread the app's default seed, 0, gives the same motion again (ANTs would read a seed of 0
    # as "from the clock"); in a child process, whose ITK starts with one thread (this one's may not)
    code = ("import sys; from bids_phydiff.prep.hmc import HmcConfig, estimate_motion; "
            "p = estimate_motion(*sys.argv[1:4], sys.argv[4], threads=1, seed=0, "
            "config=HmcConfig(anchor='registration', finest_mm=0)).parameters; print(p.tobytes().hex())")
    again = [subprocess.run([sys.executable, "-c", code, str(dwi), str(tmp_path / "dwi.bval"), str(mask),
                             str(tmp_path / f"hmc-seed0-{k}")], capture_output=True, text=True, check=True).stdout
             for k in range(2)]
    assert again[0] == again[1] and len(again[0]) > 100


def test_the_refinement_band_straddles_the_brain_outline():
    """The diffusion-weighted refinements see one voxel either side of the mask's boundary by default (their
    interior contrast depends on the gradient direction); the b0 volumes see the whole mask."""
    from bids_phydiff.prep.hmc import DEFAULT_HMC, HmcConfig, metric_masks

    mask = np.zeros((12, 12, 12), bool)
    mask[3:9, 3:9, 3:9] = True  # a 6-voxel cube
    brain, band = metric_masks(mask, DEFAULT_HMC)
    assert np.array_equal(brain, mask)
    assert band[2, 5, 5] and band[3, 5, 5] and not band[4, 5, 5] and not band[1, 5, 5]
    assert band.sum() == (6 ** 3 - 4 ** 3) + 6 * 6 ** 2  # the cube's outer voxel layer, one layer on each face
    assert np.array_equal(metric_masks(mask, HmcConfig(edge_band=None))[1], mask)
    with pytest.raises(ValueError, match="edge_band"):
        HmcConfig(edge_band=(0, 0))


def test_a_lone_b0_is_the_reference_as_it_is(tmp_path):
    """A run with one b0 (common in clinical protocols): the b0 is the frame, so it keeps the identity and the
    b0 reference is that volume, not a resampled copy (which would change the registration to the template
    for nothing); the diffusion-weighted volumes are still corrected."""
    _ants()
    from bids_phydiff.prep.hmc import HmcConfig, estimate_motion
    from bids_phydiff.prep.mask import write_brain_mask

    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-23.0, -25.0, -21.0]
    still = _blob()
    shifted = [0.5 * _blob(centre=(11.0 + dx, 13.5, 10.0)) for dx in (0.0, 0.5, -0.5)]
    dwi = _write_series(tmp_path / "dwi.nii.gz", [still, *shifted], affine)
    write_fsl(GradientTable(np.array([0, 1000, 1000, 1000]), np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0],
                                                                      [0, 0, 1]], dtype=float)),
              tmp_path / "dwi.bval", tmp_path / "dwi.bvec")
    base = tmp_path / "still.nii.gz"
    nib.Nifti1Image(still.astype(np.float32), affine).to_filename(base)
    mask = write_brain_mask(base, tmp_path / "mask.nii.gz")
    found = estimate_motion(dwi, tmp_path / "dwi.bval", mask, tmp_path / "hmc", config=HmcConfig(finest_mm=0))
    assert np.array_equal(found.parameters[0], np.zeros(6)) and found.fd[0] == 0
    np.testing.assert_array_equal(nib.load(found.b0_reference).get_fdata(), still.astype(np.float32))
    # the shell's volumes, 1 mm (half a voxel) apart in x, are put back relative to their mean
    np.testing.assert_allclose(found.parameters[1:, 0] - found.parameters[1:, 0].mean(), [0.0, 1.0, -1.0],
                               atol=0.2)


def test_per_volume_transforms_resample_each_volume_once_and_rotate_its_bvec(tmp_path):
    """Two volumes, the second moved by a known rigid map: resampling through [identity, hmc_i] brings both
    onto the same image, and only the second b-vector turns, by the inverse rotation."""
    ants = _ants()
    from bids_phydiff.prep.resample import resample_series

    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-23.0, -25.0, -21.0]
    still = _blob()
    base = tmp_path / "still.nii.gz"
    nib.Nifti1Image(still.astype(np.float32), affine).to_filename(base)
    world = rigid_matrix([1.5, -1.0, 0.5, 0.0, 0.0, np.deg2rad(8.0)])
    matrix, offset = world_to_ants(world)
    identity, motion = tmp_path / "identity.mat", tmp_path / "motion.mat"
    for path, (m, o) in ((identity, (np.eye(3), np.zeros(3))), (motion, (matrix, offset))):
        ants.write_transform(ants.create_ants_transform(transform_type="AffineTransform", dimension=3, matrix=m,
                                                        translation=o, center=[0.0, 0.0, 0.0]), str(path))
    fixed = ants.image_read(str(base))
    moved = ants.apply_transforms(fixed, fixed, [str(motion)], whichtoinvert=[True], interpolator="bSpline").numpy()
    dwi = _write_series(tmp_path / "dwi.nii.gz", [still, moved], affine)
    out = resample_series(dwi, [identity], base, tmp_path / "out.nii.gz", tmp_path, volume_transforms=[identity, motion])
    data = nib.load(out).get_fdata()
    inside = still > 20
    assert np.abs(data[..., 1] - data[..., 0])[inside].mean() < 0.05 * still[inside].mean()
    with pytest.raises(ValueError, match="per-volume transforms"):
        resample_series(dwi, [identity], base, tmp_path / "bad.nii.gz", tmp_path, volume_transforms=[identity])

    g = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    write_fsl(GradientTable(np.array([1000.0, 1000.0]), g), tmp_path / "in.bval", tmp_path / "in.bvec")
    bval, bvec = write_reoriented_fsl(tmp_path / "in.bval", tmp_path / "in.bvec", dwi, out, tmp_path / "o.bval",
                                      tmp_path / "o.bvec", [identity], volume_transforms=[identity, motion])
    world_out = fsl_to_world(read_fsl(bval, bvec).bvecs, affine)
    world_in = fsl_to_world(g, affine)
    np.testing.assert_allclose(world_out[0], world_in[0], atol=1e-6)
    np.testing.assert_allclose(world_out[1], world[:3, :3].T @ world_in[1], atol=1e-5)  # R^T g


def test_fine_grids_are_registered_on_a_coarser_pyramid():
    """A 2 mm (or finer) series is registered with its finest level at about 4 mm: as accurate on a 2 mm
    phantom and several times faster (docs/motion_correction.md); grids of 2.5 mm and coarser keep their
    native grid."""
    from bids_phydiff.prep.hmc import DEFAULT_HMC, HmcConfig

    assert DEFAULT_HMC.pyramid(2.0)[0] == (4, 2) and DEFAULT_HMC.pyramid(1.0)[0] == (8, 4)
    assert DEFAULT_HMC.pyramid(1.25)[0] == (6, 3)
    assert DEFAULT_HMC.pyramid(2.5)[0] == DEFAULT_HMC.pyramid(3.0)[0] == DEFAULT_HMC.shrink_factors == (2, 1)
    assert HmcConfig(finest_mm=0).pyramid(1.0)[0] == (2, 1)
    assert DEFAULT_HMC.pyramid(1.0)[1] == DEFAULT_HMC.smoothing_sigmas  # sigmas in native voxels, unscaled
