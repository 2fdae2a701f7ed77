"""Target gradient schemes and the model-grid check of the synthesis room."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from bids_phydiff.model import GridSpec, PhyDiff, preset
from bids_phydiff.prep.gradients import GradientError, GradientTable, write_fsl
from bids_phydiff.synth import (
    GridMismatchError,
    TargetScheme,
    acquired_scheme,
    check_grid,
    check_shell_range,
    scheme_from_files,
    shell_scheme,
    slice_grid,
)


def test_shell_scheme_has_b0s_first_then_uniform_unit_directions_per_shell():
    scheme = shell_scheme([1000, 2500], [6, 10], n_b0=2, seed=4)
    assert len(scheme) == 18 and scheme.source == "shells"
    np.testing.assert_array_equal(scheme.bvals, [0, 0] + [1000] * 6 + [2500] * 10)
    np.testing.assert_array_equal(scheme.b0_mask, [True, True] + [False] * 16)
    np.testing.assert_array_equal(scheme.dw_index, np.arange(2, 18))
    assert np.all(scheme.bvecs[:2] == 0)
    np.testing.assert_allclose(np.linalg.norm(scheme.bvecs[2:], axis=1), 1.0, atol=1e-12)
    # spread over the hemisphere: no two directions of a shell closer than 30 degrees (antipodes included)
    v = scheme.bvecs[8:]
    cos = np.abs(v @ v.T) - 2 * np.eye(len(v))
    assert cos.max() < np.cos(np.radians(30))
    np.testing.assert_array_equal(shell_scheme([1000, 2500], [6, 10], n_b0=2, seed=4).bvecs, scheme.bvecs)
    np.testing.assert_array_equal(scheme.shells(), [1000, 2500])
    assert len(shell_scheme([700], 3, n_b0=0)) == 3


def test_shell_scheme_refuses_nonsense():
    with pytest.raises(ValueError, match="shells must be >"):
        shell_scheme([0, 1000], 6)
    with pytest.raises(ValueError, match="at least one shell"):
        shell_scheme([], 6)
    with pytest.raises(ValueError, match="n_b0"):
        shell_scheme([1000], 6, n_b0=-1)


def test_schemes_from_files_round_trip(tmp_path):
    table = GradientTable([0, 1000, 1000, 2000], [[0, 0, 0], [1, 0, 0], [0, 0.6, 0.8], [0, 0, -1]])
    write_fsl(table, tmp_path / "a.bval", tmp_path / "a.bvec")
    for make, source in ((acquired_scheme, "acquired"), (scheme_from_files, "files")):
        scheme = make(tmp_path / "a.bval", tmp_path / "a.bvec")
        assert scheme.source == source
        np.testing.assert_array_equal(scheme.bvals, table.bvals)
        np.testing.assert_allclose(scheme.bvecs, table.bvecs, atol=1e-6)
    back = scheme.table()
    assert isinstance(back, GradientTable) and len(back) == 4


def test_b0_targets_get_zero_vectors_and_diffusion_vectors_are_made_exactly_unit():
    scheme = TargetScheme([0, 10, 1000], [[0.5, 0.5, 0.0], [1, 0, 0], [0, 1.02, 0]])
    np.testing.assert_array_equal(scheme.b0_mask, [True, True, False])
    assert np.all(scheme.bvecs[:2] == 0) and scheme.bvecs[2, 1] == 1.0
    with pytest.raises(ValueError):  # immutable
        scheme.bvals[0] = 5


@pytest.mark.parametrize(
    "bvals,bvecs,error",
    [
        ([0, 1000], [[0, 0, 0], [0.5, 0, 0]], GradientError),
        ([0, -1000], [[0, 0, 0], [1, 0, 0]], ValueError),
        ([0, 1000], [[0, 0, 0]], ValueError),
        ([0, np.nan], [[0, 0, 0], [1, 0, 0]], ValueError),
        ([], np.zeros((0, 3)), ValueError),
    ],
)
def test_bad_schemes_are_refused(bvals, bvecs, error):
    with pytest.raises(error):
        TargetScheme(bvals, bvecs)


def test_b_values_outside_the_shells_are_warned_about(caplog):
    scheme = TargetScheme([0, 500, 1500, 3000, 3000], [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]])
    with caplog.at_level(logging.WARNING, logger="bids_phydiff.synth.scheme"):
        outside = check_shell_range(scheme, [1000, 2000])
    np.testing.assert_array_equal(outside, [500, 3000])
    assert "500, 3000" in caplog.text and "clamped" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bids_phydiff.synth.scheme"):
        assert check_shell_range(scheme, [500, 3000]).size == 0  # b0 is never out of range
    assert caplog.text == ""


def test_slice_grid_and_grid_check():
    model = PhyDiff(preset("tiny"))
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    spec = GridSpec("Phantom", 2.0, (23, 27, 6), affine.tolist())
    grid = slice_grid(spec, model)
    assert grid.shape == (23, 27, 6) and grid.padded == (24, 32)
    check_grid(spec, (23, 27, 6, 10), affine)
    with pytest.raises(GridMismatchError, match=r"\(23, 27, 5\)"):
        check_grid(spec, (23, 27, 5), affine, what="sub-01_dwiref.nii.gz")
    shifted = affine.copy()
    shifted[0, 3] = 2.0
    with pytest.raises(GridMismatchError, match="affine"):
        check_grid(spec, (23, 27, 6), shifted)
