"""``x0_skip``: the x0 objective read through the v parameterisation, x0 = sqrt(abar) x_t - sqrt(1 - abar) F.

The defect it addresses (docs/evaluation.md, "Patch seams and blur on real scans"): a network that must
produce x0 through its patch split does not learn to pass its input through; its output is block-constant
even at t = 0, where x_t holds the answer.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bids_phydiff.eval.fidelity import PatchGrid, seam_score, sharpness_score
from bids_phydiff.model import PhyDiff, PhyDiffConfig, preset

from test_model_phydiff import _randomise, phantom_batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def skip_model(**changes) -> PhyDiff:
    torch.manual_seed(0)
    model = PhyDiff(preset("tiny").replace(adapter=None, objective="x0", x0_skip=True, **changes))
    _randomise(model)  # a trained network's output is not zero
    return model


def textured_batch():
    """The phantom batch with fine detail (a pixel-scale texture) in the target."""
    batch = phantom_batch(4, 32)
    texture = torch.randn(batch.target.shape, generator=torch.Generator().manual_seed(7)) * 0.05
    batch.target = batch.target + texture * (batch.target > -0.99)
    return batch


def test_x0_skip_prediction_at_low_noise_keeps_the_input_detail_and_has_no_patch_seams():
    model = skip_model()
    batch = textured_batch()
    t = torch.zeros(4, dtype=torch.long)
    g = model.schedule.excess_beta(batch.adc, batch.bval)
    x_t = model.schedule.q_sample(batch.target, t, torch.zeros_like(batch.target), g)
    with torch.no_grad():
        out = model(x_t, t, batch.b0, batch.bval, batch.bvec, batch.slice_pos)
    x0 = model.schedule.x0_from_eps(x_t, t, g, model.predict_eps(x_t, t, g, out)).float()
    pred = x0[:, 0].permute(1, 2, 0).numpy()
    target = batch.target[:, 0].permute(1, 2, 0).numpy()
    mask = target > -0.99
    assert seam_score(pred, target, PatchGrid(4), mask) == pytest.approx(1.0, abs=0.05)
    assert sharpness_score(pred, target, mask) == pytest.approx(1.0, abs=0.05)


def test_x0_skip_loss_is_the_x0_mse_of_the_v_parameterised_output():
    model = skip_model()
    batch = phantom_batch(2)
    t, noise = torch.tensor([10, 900]), torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    g = model.schedule.excess_beta(batch.adc, batch.bval)
    x_t = model.schedule.q_sample(batch.target, t, noise, g)
    out = model(x_t, t, batch.b0, batch.bval, batch.bvec, batch.slice_pos)
    a, s = model.schedule.scales(t, g, x_t)
    torch.testing.assert_close(model.loss(batch, t=t, noise=noise), F.mse_loss(a * x_t - s * out, batch.target))
    # the samplers get the noise implied by that x0
    eps = model.predict_eps(x_t, t, g, out)
    torch.testing.assert_close(model.schedule.x0_from_eps(x_t, t, g, eps), a * x_t - s * out, rtol=1e-4, atol=1e-4)


def test_x0_skip_is_an_x0_option_and_defaults_off_for_configs_without_the_key():
    with pytest.raises(ValueError, match="x0_skip"):
        preset("tiny").replace(objective="eps", x0_skip=True)
    data = preset("tiny").to_dict()
    data.pop("x0_skip")
    assert PhyDiffConfig.from_dict(data).x0_skip is False  # a bundle written before the key
    on = preset("tiny").replace(x0_skip=True)
    assert PhyDiffConfig.from_dict(on.to_dict()) == on
