"""b-vector rotation through ANTs transforms: the linear part read from .mat/.h5, its direction and frame."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_phydiff.prep.ants_runtime import ants_session
from bids_phydiff.prep.gradients import (
    GradientError,
    ants_world_linear,
    fsl_to_world,
    read_ants_linear,
    read_fsl,
    write_reoriented_fsl,
)
from bids_phydiff.prep.resample import resample_series, write_composite


def _rotation(axis, degrees):
    axis = np.asarray(axis, dtype=np.float64)
    axis /= np.linalg.norm(axis)
    a = np.radians(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def test_linear_part_matches_what_ants_does_to_points(tmp_path):
    """read_ants_linear / the chain product equal the Jacobian of ants.apply_transforms_to_points."""
    rng = np.random.default_rng(0)
    with ants_session(tmp_path) as ants:
        files = []
        for k in range(2):
            tx = ants.create_ants_transform(transform_type="AffineTransform", dimension=3,
                                            matrix=np.eye(3) + 0.2 * rng.normal(size=(3, 3)),
                                            translation=rng.normal(size=3) * 5, center=rng.normal(size=3) * 10)
            files.append(str(tmp_path / f"t{k}.mat"))
            ants.write_transform(tx, files[-1])
        points = rng.normal(size=(4, 3)) * 30
        frame = pd.DataFrame(points, columns=["x", "y", "z"])
        for invert in ([False, False], [True, False], [False, True]):
            mapped = ants.apply_transforms_to_points(3, frame, files, whichtoinvert=invert).values
            jacobian = np.linalg.lstsq(np.diff(points, axis=0), np.diff(mapped, axis=0), rcond=None)[0].T
            composite = write_composite(files, invert, tmp_path / "c.h5", tmp_path)
            np.testing.assert_allclose(read_ants_linear(composite), jacobian, atol=1e-5)
            chain = np.eye(3)
            for f, inv in zip(files, invert):
                m = read_ants_linear(f)
                chain = (np.linalg.inv(m) if inv else m) @ chain
            np.testing.assert_allclose(chain, jacobian, atol=1e-5)
            # the composite maps points exactly as the list does
            via_h5 = ants.apply_transforms_to_points(3, frame, [str(composite)]).values
            np.testing.assert_allclose(via_h5, mapped, atol=1e-3)


def _blob(shape, affine, direction_ras, centre_ras):
    """An elongated Gaussian blob along ``direction_ras`` (world RAS), on a grid."""
    ijk = np.indices(shape).reshape(3, -1).T
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3] - centre_ras
    d = direction_ras / np.linalg.norm(direction_ras)
    along = xyz @ d
    across = np.linalg.norm(xyz - along[:, None] * d, axis=1)
    return np.exp(-(along / 25.0) ** 2 - (across / 5.0) ** 2).reshape(shape).astype(np.float32)


def _principal_axis(data, affine):
    ijk = np.indices(data.shape).reshape(3, -1).T
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    w = data.reshape(-1).clip(0)
    centre = (w[:, None] * xyz).sum(0) / w.sum()
    cov = ((xyz - centre) * w[:, None]).T @ (xyz - centre) / w.sum()
    return np.linalg.eigh(cov)[1][:, -1]


def test_world_linear_turns_directions_as_ants_turns_images(tmp_path):
    """A blob along d in the moving image, resampled by ANTs through a rotation, lies along
    ants_world_linear(...) @ d in the fixed image; the LPS <-> RAS handling is what makes it right."""
    moving_affine = np.eye(4)  # tilted, LAS-like voxel axes (ITK needs orthonormal directions)
    moving_affine[:3, :3] = _rotation([0.2, 1.0, 0.1], 20.0) @ np.diag([-2.5, 2.5, 2.5])
    moving_affine[:3, 3] = [60, -70, -50]
    fixed_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    fixed_affine[:3, 3] = -60
    direction = np.array([0.3, 0.8, 0.5])
    centre = moving_affine[:3, :3] @ np.array([24, 28, 20]) + moving_affine[:3, 3]
    moving = tmp_path / "moving.nii.gz"
    nib.save(nib.Nifti1Image(_blob((48, 56, 40), moving_affine, direction, centre), moving_affine), str(moving))
    fixed = tmp_path / "fixed.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((60, 60, 60), np.float32), fixed_affine), str(fixed))
    lps_rotation = _rotation([1.0, -0.5, 0.3], 45.0)
    with ants_session(tmp_path) as ants:
        centre_lps = centre * [-1, -1, 1]
        tx = ants.create_ants_transform(transform_type="AffineTransform", dimension=3, matrix=lps_rotation,
                                        center=centre_lps, translation=np.zeros(3))
        ants.write_transform(tx, str(tmp_path / "rot.mat"))
    out = resample_series(moving, [tmp_path / "rot.mat"], fixed, tmp_path / "warped.nii.gz", tmp_path)
    img = nib.load(out)
    seen = _principal_axis(img.get_fdata(), img.affine)
    predicted = ants_world_linear([tmp_path / "rot.mat"]) @ (direction / np.linalg.norm(direction))
    assert np.degrees(np.arccos(min(1.0, abs(seen @ predicted)))) < 2.0
    # the ANTs matrix read as RAS, used the wrong way round, both, or not at all: each misses
    flip = np.diag([-1.0, -1.0, 1.0])
    wrong = [np.linalg.inv(lps_rotation), flip @ lps_rotation @ flip, lps_rotation, np.eye(3)]
    for w in wrong:
        w = w @ direction / np.linalg.norm(direction)
        assert np.degrees(np.arccos(min(1.0, abs(seen @ w)))) > 10.0


def test_reorienting_to_another_grid_keeps_world_directions(real_bids, tmp_path):
    src = real_bids / "sub-toshiba" / "dwi"
    source = src / "sub-toshiba_acq-ax30_dwi.nii.gz"
    target = src / "sub-toshiba_acq-ortho_dwi.nii.gz"
    bval, bvec = source.with_name("sub-toshiba_acq-ax30_dwi.bval"), source.with_name("sub-toshiba_acq-ax30_dwi.bvec")
    out_bval, out_bvec = write_reoriented_fsl(bval, bvec, source, target, tmp_path / "o.bval", tmp_path / "o.bvec")
    before, after = read_fsl(bval, bvec), read_fsl(out_bval, out_bvec)
    np.testing.assert_array_equal(before.bvals, after.bvals)
    world_before = fsl_to_world(before.bvecs, nib.load(source).affine)
    world_after = fsl_to_world(after.bvecs, nib.load(target).affine)
    np.testing.assert_allclose(world_after, world_before, atol=1e-5)
    # ax30 is tilted by 30 degrees against ortho: the file's numbers must change
    dw = before.bvals > 50
    angles = np.degrees(np.arccos(np.abs((before.bvecs[dw] * after.bvecs[dw]).sum(1)).clip(0, 1)))
    assert angles.max() > 20


def test_unreadable_transform_is_named(tmp_path):
    bad = tmp_path / "bad.mat"
    bad.write_bytes(b"not a matlab file")
    with pytest.raises(GradientError, match="bad.mat"):
        read_ants_linear(bad)
    with pytest.raises(GradientError, match="not found"):
        read_ants_linear(tmp_path / "missing.h5")
