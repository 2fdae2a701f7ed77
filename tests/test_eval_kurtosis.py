"""The q-space evaluation's kurtosis and per-shell directions (eval/kurtosis.py) on signals whose answers are
known: a Gaussian signal has no kurtosis, an isotropic two-compartment signal has the kurtosis of its
log-signal's curvature, and a rotated fibre is found rotated at every shell."""

from __future__ import annotations

import numpy as np
import pytest

from bids_phydiff.eval.compare import qspace_rows
from bids_phydiff.eval.kurtosis import kurtosis_fittable, mean_kurtosis, qspace_agreement, qspace_maps
from bids_phydiff.eval.tensor_extrapolation import tensor_extrapolation

SHAPE = (3, 2, 2)


def _directions(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _scheme(shells=(1000.0, 2000.0), per_shell: int = 30):
    bvals = np.concatenate([[0.0, 0.0], *[np.full(per_shell, b) for b in shells]])
    bvecs = np.concatenate([np.zeros((2, 3)), *[_directions(per_shell, k) for k in range(len(shells))]])
    return bvals, bvecs


def _fibre(bvals, bvecs, direction, axial=1.7e-3, radial=0.3e-3) -> np.ndarray:
    """One zeppelin (a single tensor: Gaussian) along ``direction`` in every voxel, S0 = 1000."""
    d = np.asarray(direction, float) / np.linalg.norm(direction)
    adc = radial + (axial - radial) * (bvecs @ d) ** 2
    return np.broadcast_to(1000 * np.exp(-bvals * adc), SHAPE + (bvals.size,)).astype(np.float64).copy()


def _agree(prediction, reference, bvals, bvecs, region):
    return qspace_agreement(qspace_maps(prediction, bvals, bvecs, region), qspace_maps(reference, bvals, bvecs, region))


def test_a_gaussian_signal_has_no_kurtosis_and_a_two_compartment_signal_its_curvature():
    bvals, bvecs = _scheme()
    mask = np.ones(SHAPE, bool)
    assert np.abs(mean_kurtosis(_fibre(bvals, bvecs, [1, 0, 0]), bvals, bvecs, mask)).max() < 1e-3
    slow, fast = 0.5e-3, 2.5e-3
    signal = 500 * (np.exp(-bvals * slow) + np.exp(-bvals * fast))
    series = np.broadcast_to(signal, SHAPE + (bvals.size,)).copy()
    # what the cumulant expansion ln S = ln S0 - b D + b^2 D^2 K / 6 gives through b = 0, 1000, 2000
    c2, c1, _ = np.polyfit([0.0, 1000.0, 2000.0], np.log(500 * (np.exp(-np.array([0, 1e3, 2e3]) * slow)
                                                                  + np.exp(-np.array([0, 1e3, 2e3]) * fast))), 2)
    expected = 6 * c2 / c1 ** 2
    np.testing.assert_allclose(mean_kurtosis(series, bvals, bvecs, mask), expected, rtol=0.02)
    assert 0.5 < expected < 1.5


def test_the_kurtosis_of_a_series_with_itself_is_perfect_and_a_tensor_has_none():
    bvals, bvecs = _scheme()
    mask = np.ones(SHAPE, bool)
    fibre = _fibre(bvals, bvecs, [0, 1, 1])
    mixture = 0.6 * fibre + 0.4 * 1000 * np.exp(-bvals * 3e-3)  # fibre plus free water: non-Gaussian
    same = _agree(mixture, mixture, bvals, bvecs, mask)
    assert same["mk_mae"] == 0 and same["voxels"] == mask.sum() and same["mk_reference"] > 0.3
    # the tensor of the b = 1000 shell, extrapolated to every volume, is Gaussian: it misses all of the kurtosis
    extrapolated = tensor_extrapolation(mixture, bvals, bvecs, mask, bvals, bvecs, shells=[1000.0])
    tensor = _agree(extrapolated, mixture, bvals, bvecs, mask)
    assert tensor["mk_prediction"] < 0.01
    assert tensor["mk_bias"] == pytest.approx(-same["mk_reference"], abs=0.01)


def test_each_shell_finds_a_rotated_fibre_rotated():
    bvals, bvecs = _scheme((1000.0, 2000.0, 3000.0))
    mask = np.ones(SHAPE, bool)
    angle = np.radians(25.0)
    reference = _fibre(bvals, bvecs, [1, 0, 0])
    rotated = _fibre(bvals, bvecs, [np.cos(angle), np.sin(angle), 0])
    angles = {k: v for k, v in _agree(rotated, reference, bvals, bvecs, mask).items() if k.startswith("angle")}
    assert set(angles) == {"angle_median_b1000", "angle_median_b2000", "angle_median_b3000"}
    for value in angles.values():
        assert value == pytest.approx(25.0, abs=0.1)
    rows = qspace_rows({"same": reference, "rotated": rotated}, reference, bvals, bvecs, mask, {"region": "all"})
    assert [r["method"] for r in rows] == ["same", "rotated"] and rows[0]["angle_median_b2000"] == 0
    assert rows[1]["region"] == "all" and rows[1]["mk_mae"] < 1e-3  # a rotation changes no kurtosis


def test_a_scheme_without_two_shells_or_enough_volumes_is_not_fitted():
    bvals, bvecs = _scheme((1000.0,))
    assert not kurtosis_fittable(bvals)
    assert not kurtosis_fittable(_scheme(per_shell=6)[0])  # 2 + 12 volumes < 22 unknowns
    assert kurtosis_fittable(_scheme()[0])
    with pytest.raises(ValueError, match="two diffusion-weighted shells"):
        mean_kurtosis(np.ones(SHAPE + (bvals.size,)), bvals, bvecs, np.ones(SHAPE, bool))


def test_isotropic_fits_have_no_direction_to_agree_on():
    """Two exactly isotropic signals give dipy the same arbitrary axis: that is no agreement, so such voxels
    are left out (NaN when no voxel is left), not counted as 0 degrees."""
    bvals, bvecs = _scheme()
    mask = np.ones(SHAPE, bool)
    free = np.broadcast_to(1000 * np.exp(-bvals * 0.7e-3), SHAPE + (bvals.size,)).copy()
    assert np.isnan(_agree(0.9 * free, free, bvals, bvecs, mask)["angle_median_b1000"])
    fibre = _fibre(bvals, bvecs, [1, 0, 0])
    assert _agree(fibre, fibre, bvals, bvecs, mask)["angle_median_b1000"] == 0
