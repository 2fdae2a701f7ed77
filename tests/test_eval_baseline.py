"""The physics baseline on phantom noise-free data with the ADC of paper Eq. 4 computed from it."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from bids_phydiff.eval import physics_baseline
from bids_phydiff.phantom.deformation import Deformation
from bids_phydiff.phantom.signal import TissueModel
from bids_phydiff.phantom.template import template_grid
from bids_phydiff.phantom.truth import render_truth
from bids_phydiff.prep.adc import AdcAccumulator
from bids_phydiff.prep.gradients import multishell_scheme

SHELLS = np.array([1000.0, 2000.0, 3000.0])


@pytest.fixture(scope="module")
def phantom():
    truth = render_truth(template_grid(6), Deformation.identity(), TissueModel())
    table = multishell_scheme(list(SHELLS), 12, n_b0=1, seed=1)
    dwi = truth.signal(table.bvals, table.bvecs)
    mask = truth.s0 > 0
    acc = AdcAccumulator(SHELLS, truth.shape)
    acc.add(dwi, table.bvals, mask)
    # voxels of one isotropic compartment: mono-exponential, direction-free signal (true ADC = its diffusivity)
    pure = mask & (truth.fractions.max(axis=-1) > 0.999)
    pure &= np.isin(truth.fractions.argmax(axis=-1), [truth.compartments.index(c) for c in ("WM_iso", "GM", "CSF")])
    return {"truth": truth, "table": table, "dwi": dwi, "mask": mask, "atlas": acc.atlas().astype(np.float64),
            "pure": pure}


def test_baseline_reproduces_the_direction_averaged_signal_of_every_shell(phantom):
    table, dwi, mask = phantom["table"], phantom["dwi"], phantom["mask"]
    base = physics_baseline(phantom["truth"].s0, table.bvals, phantom["atlas"], SHELLS, mask=mask)
    assert base.shape == dwi.shape and base.dtype == np.float32
    np.testing.assert_allclose(base[..., 0], np.where(mask, phantom["truth"].s0, 0))  # b0 target = S0
    for b in SHELLS:
        shell = table.bvals == b
        # exp(-b * mean ADC) = geometric mean over the directions of the shell
        geometric = np.exp(np.log(dwi[..., shell][mask]).mean(axis=-1))
        np.testing.assert_allclose(base[..., shell][mask], geometric[:, None] * np.ones(shell.sum()), rtol=1e-4)
    assert np.all(base[~mask] == 0)


def test_baseline_with_the_true_adc_reproduces_the_signal_where_it_is_mono_exponential(phantom):
    truth, pure = phantom["truth"], phantom["pure"]
    assert pure.sum() > 500
    bvals = np.array([0.0, 1000.0, 1500.0, 2500.0, 3000.0])  # between the shells too
    bvecs = np.array([[0, 0, 0], [1, 0, 0], [0, 0.6, 0.8], [0, 1, 0], [0.6, 0.8, 0]], float)
    signal = truth.signal(bvals, bvecs)
    base = physics_baseline(truth.s0, bvals, phantom["atlas"], SHELLS)
    np.testing.assert_allclose(base[pure], signal[pure], rtol=1e-4)
    # and it is direction-blind: where fibres make the signal anisotropic, it cannot be exact
    fibre = phantom["mask"] & (truth.fractions[..., : len(truth.bundles)].sum(-1) > 0.5)
    assert np.abs(base[fibre][:, 1] / signal[fibre][:, 1] - 1).max() > 0.1


def test_baseline_interpolates_the_adc_between_shells_and_clamps_outside(phantom, caplog):
    s0 = np.full((2, 2, 1), 1000.0)
    atlas = np.stack([np.full((2, 2, 1), 1e-3), np.full((2, 2, 1), 0.5e-3)], -1)  # shells 2000, 1000 (any order)
    with caplog.at_level(logging.WARNING):
        out = physics_baseline(s0, [0, 1000, 1500, 2000, 4000], atlas, [2000, 1000])
    expected = [1000, 1000 * np.exp(-0.5), 1000 * np.exp(-1500 * 0.75e-3), 1000 * np.exp(-2.0), 1000 * np.exp(-4.0)]
    np.testing.assert_allclose(out[0, 0, 0], expected, rtol=1e-6)
    assert "4000" in caplog.text
    with pytest.raises(ValueError):
        physics_baseline(s0, [1000], atlas[..., :1], [1000, 2000])
