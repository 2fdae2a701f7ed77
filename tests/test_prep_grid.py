"""Grid equality: the one check every room uses to refuse data on another grid."""

from __future__ import annotations

import numpy as np

from bids_phydiff.prep.grid import same_grid

AFFINE = np.array([[-2.0, 0, 0, 90], [0, 2.0, 0, -126], [0, 0, 2.0, -72], [0, 0, 0, 1]])


def test_a_grid_is_its_own_grid_and_volumes_do_not_count():
    assert same_grid((91, 109, 91), AFFINE, (91, 109, 91), AFFINE)
    # a 4D series (volumes last) lies on the grid of its 3D mask; lists and tuples of tuples work too
    assert same_grid((91, 109, 91, 30), AFFINE, [91, 109, 91], tuple(map(tuple, AFFINE.tolist())))


def test_another_shape_or_a_shifted_affine_is_another_grid():
    assert not same_grid((91, 109, 91), AFFINE, (91, 109, 90), AFFINE)
    shifted = AFFINE.copy()
    shifted[0, 3] += 0.01  # 10 micrometres: beyond the default 1e-3 mm
    assert not same_grid((91, 109, 91), AFFINE, (91, 109, 91), shifted)
    assert same_grid((91, 109, 91), AFFINE, (91, 109, 91), shifted, atol=0.02)
    rounded = AFFINE.copy()
    rounded[0, 3] += 1e-4  # rounding in a JSON file or a NIfTI header
    assert same_grid((91, 109, 91), AFFINE, (91, 109, 91), rounded)


def test_a_malformed_affine_is_never_the_same_grid():
    assert not same_grid((91, 109, 91), AFFINE, (91, 109, 91), AFFINE[:3])
