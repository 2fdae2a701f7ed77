"""Samplers: DDPM and DDIM with per-pixel alphas, from noise or SDEdit; determinism and step counts."""

from __future__ import annotations

import json

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


class GaussianData:
    """Data x0 ~ N(mu, sigma^2) independently per pixel, and its exact optimal (MMSE) noise predictor under
    the per-pixel schedule: E[x0 | x_t] = mu + sqrt(abar) sigma^2 (x_t - sqrt(abar) mu) / (abar sigma^2 + 1 - abar)."""

    def __init__(self, schedule: PhysicsSchedule, g, mu, sigma):
        self.schedule, self.g = schedule, g
        self.mu, self.var = mu.double(), sigma.double() ** 2

    def __call__(self, x, t):
        abar = self.schedule.alpha_bar(t, self.g)
        a, x = abar.sqrt(), x.double()
        x0 = self.mu + a * self.var * (x - a * self.mu) / (abar * self.var + 1.0 - abar)
        return ((x - a * x0) / (1.0 - abar).sqrt()).float()


@pytest.mark.parametrize("method,eta", [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 1.0)])
def test_samplers_draw_the_data_distribution_with_an_optimal_predictor(method, eta):
    n, size = 320, 8  # samples, pixels per side: 20480 values
    rng = torch.Generator().manual_seed(0)
    mu = torch.rand(1, 1, size, size, generator=rng) * 2 - 1
    sigma = 0.7 + 0.6 * torch.rand(1, 1, size, size, generator=rng)
    adc = torch.rand(1, 1, size, size, generator=rng) * 3e-3  # mm^2/s, background .. CSF
    schedule = PhysicsSchedule(ScheduleConfig(gap=2e-3))
    g = schedule.excess_beta(adc.expand(n, 1, size, size), torch.full((n,), 1000.0))
    mid = schedule.alpha_bar(torch.tensor([300]), g[:1])
    assert mid.amax() > 1.5 * mid.amin()  # alpha-bars differ per pixel
    config = SamplerConfig(method=method, steps=schedule.num_steps, eta=eta, start="noise")
    out = sample(GaussianData(schedule, g, mu, sigma), schedule, g, (n, 1, size, size), config,
                 generator=make_generator(1, "cpu"))
    # t = 0 still carries the noise 1 - abar_0(x), and the samplers return E[x0 | x at t = 0]: a Gaussian
    # of mean mu and standard deviation sqrt(abar_0) sigma^2 / sqrt(abar_0 sigma^2 + 1 - abar_0)
    abar0 = schedule.alpha_bar(torch.zeros(1, dtype=torch.long), g[:1]).float()
    std = abar0.sqrt() * sigma**2 / (abar0 * sigma**2 + 1.0 - abar0).sqrt()
    z = (out - mu) / std  # standard normal if the sampler is right
    # 4.5 standard errors of a mean (1/sqrt(count)) and of a standard deviation (1/sqrt(2 count)); this
    # leaves room for the samplers' own bias at 1000 steps (an ancestral step ignores Var[x0 | x_t]: the
    # standard deviation comes out up to 1 % short for these sigmas and alphas, about 2 standard errors)
    count = z.numel()
    mean, spread = float(z.mean()), float(z.std())
    assert abs(mean) < 4.5 / count**0.5 and abs(spread - 1.0) < 4.5 / (2 * count) ** 0.5, (mean, spread)
    worst_mean, worst_spread = float(z.mean(0).abs().max()), float((z.std(0) - 1.0).abs().max())
    # and per pixel, each with its own alpha-bars
    assert worst_mean < 4.5 / n**0.5 and worst_spread < 4.5 / (2 * n) ** 0.5, (worst_mean, worst_spread)


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
    for config in (SamplerConfig(steps=9), SamplerConfig(clip_x0=(-1.0, 2.0))):
        assert SamplerConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="stpes"):
        SamplerConfig.from_dict({"stpes": 3})


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
