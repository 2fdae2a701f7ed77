"""Samplers: DDPM and DDIM with per-pixel alphas, from noise or SDEdit; determinism and step counts."""

from __future__ import annotations

import pytest
import torch

from bids_phydiff.model import PhysicsSchedule, SamplerConfig, ScheduleConfig, make_generator, sample
from bids_phydiff.model.sampling import timesteps

from test_model_phydiff import _randomise, phantom_batch, tiny

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class CountingEps:
    """A real (closed-form) noise predictor that counts its calls: the optimal eps for x0 = 0 data."""

    def __init__(self, schedule: PhysicsSchedule, g):
        self.schedule, self.g, self.calls, self.steps = schedule, g, 0, []

    def __call__(self, x, t):
        self.calls += 1
        self.steps.append(int(t[0]))
        abar = self.schedule.alpha_bar(t, self.g)
        return x / (1.0 - abar).sqrt().float()  # x0 = 0  =>  x_t = sqrt(1 - abar) eps


def test_sdedit_timesteps_follow_the_official_inference():
    config = SamplerConfig(method="ddpm", start="sdedit", strength=0.8)
    steps = timesteps(config, 1000)
    assert steps[0] == 799 and steps[-1] == 0 and len(steps) == 800
    assert timesteps(SamplerConfig(method="ddpm", start="noise"), 1000)[0] == 999
    ddim = timesteps(SamplerConfig(method="ddim", steps=50, start="noise"), 1000)
    assert len(ddim) == 50 and ddim[0] == 999 and ddim[-1] == 0 and ddim == sorted(ddim, reverse=True)


@pytest.mark.parametrize("method,steps,calls", [("ddpm", 7, 800), ("ddim", 7, 7), ("ddim", 1, 1)])
def test_sampler_evaluates_the_model_the_expected_number_of_times(method, steps, calls):
    schedule = PhysicsSchedule(ScheduleConfig())
    b = phantom_batch(2, 16)
    g = schedule.excess_beta(b.adc, b.bval)
    eps = CountingEps(schedule, g)
    config = SamplerConfig(method=method, steps=steps, start="sdedit", strength=0.8)
    out = sample(eps, schedule, g, (2, 1, 16, 16), config, reference=b.b0, generator=make_generator(0, "cpu"))
    assert eps.calls == calls and eps.steps[0] == 799 and eps.steps[-1] == (0 if calls > 1 else 799)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("method,eta", [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 1.0)])
def test_samplers_recover_the_data_of_an_exact_noise_predictor(method, eta):
    # with the exact eps of x0 = 0 data, every sampler must land on 0 (per-pixel alphas included)
    schedule = PhysicsSchedule(ScheduleConfig(gap=5e-3))
    b = phantom_batch(2, 16)
    g = schedule.excess_beta(b.adc, b.bval)
    config = SamplerConfig(method=method, steps=20, eta=eta, start="noise")
    out = sample(CountingEps(schedule, g), schedule, g, (2, 1, 16, 16), config, generator=make_generator(1, "cpu"))
    assert out.abs().max() < 1e-3


@pytest.mark.parametrize(
    "config",
    [
        SamplerConfig(method="ddim", steps=4, start="noise"),
        SamplerConfig(method="ddim", steps=4, eta=1.0, start="sdedit", strength=0.5),
        SamplerConfig(method="ddpm", start="sdedit", strength=0.01),
    ],
)
def test_model_sampling_is_finite_deterministic_per_seed_and_seed_dependent(config):
    model = tiny()
    _randomise(model)
    b = phantom_batch(2, 32)
    kwargs = dict(b0=b.b0, bval=b.bval, bvec=b.bvec, slice_pos=b.slice_pos, adc=b.adc, sampler=config)
    first = model.sample(**kwargs, seed=11)
    again = model.sample(**kwargs, seed=11)
    other = model.sample(**kwargs, seed=12)
    assert first.shape == (2, 1, 32, 32) and torch.isfinite(first).all()
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_sampling_with_tracts_uses_the_adapter_and_restores_training_mode():
    model = tiny()
    _randomise(model)
    model.train()
    b = phantom_batch(2, 32, tracts=True)
    config = SamplerConfig(method="ddim", steps=2, start="noise")
    kwargs = dict(b0=b.b0, bval=b.bval, bvec=b.bvec, slice_pos=b.slice_pos, adc=b.adc, sampler=config, seed=3)
    with_tracts = model.sample(**kwargs, tracts=b.tracts)
    without = model.sample(**kwargs)
    assert not torch.allclose(with_tracts, without)
    assert model.training


def test_sdedit_without_a_reference_is_refused():
    schedule = PhysicsSchedule(ScheduleConfig())
    with pytest.raises(ValueError, match="reference"):
        sample(lambda x, t: x, schedule, None, (1, 1, 8, 8), SamplerConfig(start="sdedit"))


def test_sampler_config_is_checked():
    with pytest.raises(ValueError, match="strength"):
        SamplerConfig(strength=0.0)
    with pytest.raises(ValueError, match="method"):
        SamplerConfig(method="euler")
    assert SamplerConfig.from_dict(SamplerConfig(steps=9).to_dict()) == SamplerConfig(steps=9)


def test_sampling_under_inference_mode_leaves_the_model_trainable():
    from bids_phydiff.model import attention

    for cached in (attention._axis_plan, attention._block_mask, attention._cached_neighborhood_mask):
        cached.cache_clear()  # so that this test builds them under inference mode
    model = tiny()
    b = phantom_batch(2, 32)
    with torch.inference_mode():
        model.sample(b.b0, b.bval, b.bvec, b.slice_pos, b.adc, sampler=SamplerConfig(steps=2), seed=0)
    loss = model.loss(b, generator=torch.Generator().manual_seed(0))
    loss.backward()  # cached masks and tables built during inference must not be inference tensors
    assert torch.isfinite(loss)
