"""Shifted passes (``SamplerConfig.shifts``): the network evaluated on half-patch rolled inputs and averaged.

The defect (docs/evaluation.md, "The token-period texture"): the model's token grid is fixed in the image, so
what one pass leaves in each token repeats with the patch period; on real scans that is a seam score of up
to 1.07. Averaging passes whose token grids are offset by half a patch removes the period.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bids_phydiff.model import SamplerConfig
from bids_phydiff.model.shifts import SHIFT_COUNTS, token_shifts

from test_model_phydiff import _randomise, phantom_batch, tiny

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def regression_model(**changes):
    model = tiny(objective="regression", **changes)
    _randomise(model)
    return model.eval()


def test_the_shifts_are_half_a_patch():
    assert token_shifts(1, 4) == [(0, 0)]
    assert token_shifts(2, 4) == [(0, 0), (2, 2)]
    assert sorted(token_shifts(4, 4)) == [(0, 0), (0, 2), (2, 0), (2, 2)]
    assert SHIFT_COUNTS == (1, 2, 4) and SamplerConfig().shifts is None  # None: the model's own choice
    with pytest.raises(ValueError, match="shifts"):
        SamplerConfig(shifts=3)
    with pytest.raises(ValueError, match="shifted passes"):
        token_shifts(3, 4)


def test_one_pass_is_the_plain_network_and_two_are_the_mean_with_every_condition_moved():
    """With an adapter and its tract condition: the second pass sees the b0, the tracts (through the adapter's
    features) and x_t moved by half a patch against the token grid (edge-replicated, so nothing at the grid's
    edge wraps round), and its output is cropped back."""
    model = regression_model()
    b = phantom_batch(2, 32, tracts=True)
    cond = (b.bval, b.bvec, b.slice_pos)
    one = model.sample(b.b0, *cond, b.adc, tracts=b.tracts, sampler=SamplerConfig(shifts=1))
    two = model.sample(b.b0, *cond, b.adc, tracts=b.tracts, sampler=SamplerConfig(shifts=2))
    assert model.config.backbone.size_multiple == 8
    move = lambda x: F.pad(x, (2, 6, 2, 6), mode="replicate")  # noqa: E731
    with torch.no_grad():
        plain = model.regress(b.b0, *cond, tracts=b.tracts)
        moved = model.regress(move(b.b0), *cond, tracts=move(b.tracts))[..., 2:34, 2:34]
    assert torch.equal(one, plain)
    torch.testing.assert_close(two, (plain + moved) / 2)
    assert not torch.allclose(plain, moved, atol=1e-4)  # the network is not shift-invariant: the passes differ
    # a sampler that leaves the count open takes the model's own (a bundle's sampler_shifts)
    assert torch.equal(model.sample(b.b0, *cond, b.adc, tracts=b.tracts, sampler=SamplerConfig()), one)
    model.shifts = 2
    assert torch.equal(model.sample(b.b0, *cond, b.adc, tracts=b.tracts, sampler=SamplerConfig()), two)
    # the loss the training's choice compares is that of the same averaged output
    target = b.target.float()
    assert model.loss(b, shifts=2).item() == pytest.approx(float(F.mse_loss((plain + moved) / 2, target)), rel=1e-5)
    assert model.loss(b).item() == pytest.approx(float(F.mse_loss(plain, target)), rel=1e-5)


def test_diffusion_sampling_with_shifts_calls_the_network_per_pass_and_stays_deterministic():
    model = tiny()
    _randomise(model)
    b = phantom_batch(2, 32)
    calls = []
    hook = model.backbone.register_forward_hook(lambda *_: calls.append(1))
    kwargs = dict(b0=b.b0, bval=b.bval, bvec=b.bvec, slice_pos=b.slice_pos, adc=b.adc)
    config = SamplerConfig(method="ddim", steps=3, start="noise", shifts=2)
    first = model.sample(**kwargs, sampler=config, seed=5)
    assert len(calls) == 3 * 2
    hook.remove()
    assert torch.equal(first, model.sample(**kwargs, sampler=config, seed=5))
    single = model.sample(**kwargs, sampler=SamplerConfig(method="ddim", steps=3, start="noise"), seed=5)
    assert torch.isfinite(first).all() and not torch.allclose(first, single)
