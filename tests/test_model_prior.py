"""``prior: physics``: the network corrects the physics prior (b0 + 1) exp(-b ADC) - 1 instead of drawing the
whole image through its patch tokens (docs/evaluation.md, "The physics prior")."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bids_phydiff.eval.baseline import physics_baseline
from bids_phydiff.eval.fidelity import sharpness_score
from bids_phydiff.model import PhyDiff, PhyDiffConfig, SamplerConfig, preset
from bids_phydiff.model.prior import physics_prior
from bids_phydiff.train.normalise import Normaliser

from test_model_phydiff import _randomise, phantom_batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def prior_model(objective: str = "x0") -> PhyDiff:
    torch.manual_seed(0)
    return PhyDiff(preset("tiny").replace(adapter=None, objective=objective, prior="physics"))


def test_the_prior_is_the_physics_baseline_in_normalised_units():
    rng = np.random.default_rng(0)
    s0 = rng.uniform(0, 900, (12, 10, 1))
    adc = rng.uniform(0, 3e-3, (12, 10, 1, 1))
    norm = Normaliser(800.0)
    expected = norm.forward(physics_baseline(s0, [2000.0], adc, [2000.0])[..., 0, 0])
    b0 = torch.from_numpy(norm.forward(s0[..., 0]))[None, None]
    got = physics_prior(b0, torch.from_numpy(adc[..., 0, 0])[None, None], torch.tensor([2000.0]))
    np.testing.assert_allclose(got[0, 0].numpy(), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(physics_prior(-torch.ones(1, 1, 4, 4), torch.full((1, 1, 4, 4), 1e-3), torch.tensor([1e3])),
                       -torch.ones(1, 1, 4, 4))  # no signal stays no signal


@pytest.mark.parametrize("objective", ["x0", "regression"])
def test_an_untrained_prior_model_synthesises_the_physics_baseline_and_keeps_the_b0_detail(objective):
    """The backbone's output starts at zero, so before any training the synthesis is the prior itself: the
    b0's anatomy at full resolution, not a patch-level blur of it."""
    model = prior_model(objective)
    batch = phantom_batch(4, 32)
    sampler = SamplerConfig(method="ddim", steps=4, eta=0.0, progress=False)
    out = model.sample(batch.b0, batch.bval, batch.bvec, batch.slice_pos, batch.adc, sampler=sampler, seed=0)
    expected = physics_prior(batch.b0, batch.adc, batch.bval)
    torch.testing.assert_close(out, expected, atol=2e-3, rtol=0)
    mask = (batch.target > -0.99)[:, 0].permute(1, 2, 0).numpy()
    synth, target = (x[:, 0].permute(1, 2, 0).numpy() for x in (out, batch.target))
    assert sharpness_score(synth, target, mask) == pytest.approx(1.0, abs=0.02)  # the phantom obeys the physics


def test_the_prediction_is_the_prior_plus_the_backbone_output():
    model = prior_model()
    _randomise(model)
    plain = PhyDiff(model.config.replace(prior="none"))
    plain.load_state_dict(model.state_dict())
    batch = phantom_batch(2)
    x_t, t = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(2)), torch.tensor([5, 700])
    args = (x_t, t, batch.b0, batch.bval, batch.bvec, batch.slice_pos)
    with torch.no_grad():
        torch.testing.assert_close(model(*args, adc=batch.adc),
                                   plain(*args) + physics_prior(batch.b0, batch.adc, batch.bval))
    with pytest.raises(ValueError, match="ADC-atlas"):
        model(*args)


def test_prior_is_an_x0_and_regression_option_off_for_configs_without_the_key():
    for objective in ("eps", "v"):
        with pytest.raises(ValueError, match="prior 'physics' applies to the x0"):
            preset("tiny").replace(objective=objective, prior="physics")
    with pytest.raises(ValueError, match="x0_skip"):
        preset("tiny").replace(x0_skip=True, prior="physics")
    with pytest.raises(ValueError, match="prior must be one of"):
        preset("tiny").replace(prior="tensor")
    data = preset("tiny").to_dict()
    data.pop("prior")
    assert PhyDiffConfig.from_dict(data).prior == "none"  # a bundle written before the key
    on = preset("tiny").replace(prior="physics")
    assert PhyDiffConfig.from_dict(on.to_dict()) == on
