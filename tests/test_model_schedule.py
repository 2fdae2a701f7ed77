"""The physics-guided schedule: exact per-pixel alpha-bar, plain DDPM at gap 0, the diffusion maths per pixel
(conversions between x0, eps and v, objectives' targets, DDPM posterior, DDIM update), ADC interpolation."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from bids_phydiff.model import PhysicsSchedule, ScheduleConfig, interpolate_adc


def _adc(batch=3, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 1, size, size, generator=g) * 3e-3  # mm^2/s, 0 (background) .. CSF


def _explicit_alpha_bar(config: ScheduleConfig, g: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    betas = torch.linspace(config.beta_start, config.beta_end, config.num_steps, dtype=torch.float64)
    out = []
    for i in range(g.shape[0]):
        alphas = 1.0 - betas[: t[i] + 1, None, None, None] - g[i]
        out.append(torch.prod(alphas, dim=0))
    return torch.stack(out)


@pytest.mark.parametrize("gap", [1e-3, 5e-3, 0.05])
def test_alpha_bar_per_pixel_equals_explicit_product(gap):
    config = ScheduleConfig(gap=gap)
    schedule = PhysicsSchedule(config)
    g = schedule.excess_beta(_adc(), torch.tensor([1000.0, 2000.0, 3000.0]))
    t = torch.tensor([0, 417, 999])
    got = schedule.alpha_bar(t, g)
    want = _explicit_alpha_bar(config, g, t)
    assert got.shape == (3, 1, 8, 8)
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)
    assert float((got - want).abs().max()) < 1e-6


def test_gap_zero_is_plain_ddpm_bit_for_bit():
    schedule = PhysicsSchedule(ScheduleConfig(gap=0.0))
    x0 = torch.rand(3, 1, 8, 8) * 2 - 1
    noise = torch.randn(3, 1, 8, 8)
    t = torch.tensor([5, 500, 999])
    g = schedule.excess_beta(_adc(), torch.tensor([1000.0, 2000.0, 3000.0]))
    got = schedule.q_sample(x0, t, noise, g)
    # plain DDPM written out: linear betas, cumulative product, coefficients in float64
    abar = torch.cumprod(1.0 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), dim=0)[t].view(-1, 1, 1, 1)
    want = abar.sqrt().float() * x0 + (1.0 - abar).sqrt().float() * noise
    assert torch.equal(got, want)
    assert torch.equal(schedule.q_sample(x0, t, noise, None), want)


def test_physics_term_adds_noise_where_diffusion_is_fast():
    schedule = PhysicsSchedule(ScheduleConfig(gap=1e-3))
    adc = torch.full((1, 1, 4, 4), 0.7e-3)
    adc[0, 0, 0, 0] = 3.0e-3  # CSF-like pixel
    adc[0, 0, 3, 3] = 0.0  # background
    s = schedule.structure(adc, torch.tensor([1000.0]))
    assert float(s.min()) == 0.0 and float(s.max()) == 1.0
    assert s[0, 0, 0, 0] == 0.0 and s[0, 0, 3, 3] == 1.0
    abar = schedule.alpha_bar(torch.tensor([600]), schedule.excess_beta(adc, torch.tensor([1000.0])))
    plain = PhysicsSchedule(ScheduleConfig(gap=0.0)).alpha_bar(torch.tensor([600]), None)
    assert abar[0, 0, 0, 0] < abar[0, 0, 1, 1] < abar[0, 0, 3, 3]
    assert torch.equal(abar[0, 0, 3, 3], plain[0, 0, 0, 0])  # s = 1: exactly the plain schedule


def test_flat_structure_and_b0_get_no_extra_noise():
    schedule = PhysicsSchedule(ScheduleConfig(gap=1e-3))
    flat = torch.full((2, 1, 4, 4), 1e-3)
    zeros = torch.zeros(2, 1, 4, 4, dtype=torch.float64)
    assert torch.equal(schedule.excess_beta(flat, torch.tensor([1000.0, 1000.0])), zeros)
    varied = _adc(batch=1, size=4)
    assert torch.equal(schedule.excess_beta(varied, torch.tensor([0.0])), torch.zeros(1, 1, 4, 4, dtype=torch.float64))


def test_timesteps_out_of_range_are_refused():
    schedule = PhysicsSchedule(ScheduleConfig())
    with pytest.raises(ValueError, match="timesteps"):
        schedule.alpha_bar(torch.tensor([1000]), None)


def test_schedule_config_refuses_a_gap_that_breaks_the_process():
    with pytest.raises(ValueError, match="gap"):
        ScheduleConfig(gap=-1e-3)
    with pytest.raises(ValueError, match="gap"):
        ScheduleConfig(gap=0.6)


# ---------------------------------------------------------------------------------------- ADC


def _shells():
    maps = np.stack([np.full((2, 3), 1.0e-3), np.full((2, 3), 0.8e-3), np.full((2, 3), 0.5e-3)]).astype(np.float32)
    maps[:, 0, 0] = [3.0e-3, 2.5e-3, 2.0e-3]
    return maps, [1000.0, 2000.0, 3000.0]


def test_interpolate_adc_is_exact_at_shells_and_linear_between():
    maps, shells = _shells()
    for i, b in enumerate(shells):
        assert np.array_equal(interpolate_adc(maps, shells, b), maps[i])
    mid = interpolate_adc(maps, shells, 2500.0)
    assert np.allclose(mid, (maps[1] + maps[2]) / 2, rtol=1e-6)
    quarter = interpolate_adc(maps, shells, 1250.0)
    assert np.allclose(quarter, 0.75 * maps[0] + 0.25 * maps[1], rtol=1e-6)
    assert mid.dtype == np.float32 and mid.shape == (2, 3)


def test_interpolate_adc_batched_and_tensor():
    maps, shells = _shells()
    tmaps = torch.from_numpy(maps)
    out = interpolate_adc(tmaps, torch.tensor(shells), torch.tensor([1000.0, 1500.0, 3000.0]))
    assert isinstance(out, torch.Tensor) and out.shape == (3, 2, 3) and out.dtype == torch.float32
    assert torch.equal(out[0], tmaps[0]) and torch.equal(out[2], tmaps[2])
    assert torch.allclose(out[1], (tmaps[0] + tmaps[1]) / 2)


def test_interpolate_adc_outside_the_shells_clamps_with_a_warning_or_raises(caplog):
    maps, shells = _shells()
    with caplog.at_level(logging.WARNING):
        high = interpolate_adc(maps, shells, 5000.0)
        low = interpolate_adc(maps, shells, 500.0)
    assert np.array_equal(high, maps[-1]) and np.array_equal(low, maps[0])
    assert sum("outside the range of the atlas shells" in r.getMessage() for r in caplog.records) == 2
    with pytest.raises(ValueError, match="outside"):
        interpolate_adc(maps, shells, 5000.0, clamp=False)


def test_interpolate_adc_checks_its_inputs():
    maps, _ = _shells()
    with pytest.raises(ValueError, match="increasing"):
        interpolate_adc(maps, [1000.0, 3000.0, 2000.0], 1500.0)
    with pytest.raises(ValueError, match="shells"):
        interpolate_adc(maps, [1000.0, 2000.0], 1500.0)


# ---------------------------------------------------------------------------- diffusion maths per pixel


def _per_pixel(gap=5e-3, seed=0):
    """A physics schedule, its excess beta g for random ADC maps, and t (3,)."""
    config = ScheduleConfig(gap=gap)
    schedule = PhysicsSchedule(config)
    g = schedule.excess_beta(_adc(seed=seed), torch.tensor([1000.0, 2000.0, 3000.0]))
    return config, schedule, g


def _images(seed, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(3, 1, 8, 8, generator=gen, dtype=dtype)


def test_conversions_between_x0_eps_and_v_round_trip_per_pixel():
    config, schedule, g = _per_pixel()
    t = torch.tensor([0, 417, 999])
    x0, eps = _images(1), _images(2)
    abar = _explicit_alpha_bar(config, g, t)
    assert float(abar[1].amax() / abar[1].amin()) > 1.1  # alpha-bar differs between pixels of one sample
    x_t = schedule.q_sample(x0, t, eps, g)
    torch.testing.assert_close(x_t, abar.sqrt() * x0 + (1 - abar).sqrt() * eps, rtol=0, atol=1e-12)
    v = schedule.velocity(x0, eps, t, g)
    torch.testing.assert_close(v, abar.sqrt() * eps - (1 - abar).sqrt() * x0, rtol=0, atol=1e-12)
    for got, want in [
        (schedule.x0_from_eps(x_t, t, g, eps), x0),
        (schedule.eps_from_x0(x_t, t, g, x0), eps),
        (schedule.x0_from_v(x_t, t, g, v), x0),
        (schedule.eps_from_v(x_t, t, g, v), eps),
    ]:
        # x0 from eps divides by sqrt(abar), about 0.006 at t = 999
        torch.testing.assert_close(got, want, rtol=0, atol=1e-9)
    # float32 images get float32 coefficients and keep their dtype
    x32 = schedule.q_sample(x0.float(), t, eps.float(), g)
    assert x32.dtype == torch.float32
    torch.testing.assert_close(schedule.eps_from_x0(x32, t, g, x0.float()), eps.float(), rtol=0, atol=1e-4)


@pytest.mark.parametrize("objective", ["eps", "v", "x0"])
def test_each_objectives_target_converts_back_to_the_noise(objective):
    _, schedule, g = _per_pixel()
    t = torch.tensor([3, 500, 998])
    x0, eps = _images(3), _images(4)
    x_t = schedule.q_sample(x0, t, eps, g)
    target = schedule.loss_target(objective, x0, eps, t, g)
    want = {"eps": eps, "x0": x0, "v": schedule.velocity(x0, eps, t, g)}[objective]
    assert torch.equal(target, want)
    # a network that predicts its target exactly hands the samplers the true noise, and they recover x0
    torch.testing.assert_close(schedule.predict_eps(objective, x_t, t, g, target), eps, rtol=0, atol=1e-9)
    x0_back, eps_back = schedule.predict_x0(x_t, t, g, eps)
    torch.testing.assert_close(x0_back, x0, rtol=0, atol=1e-9)
    assert torch.equal(eps_back, eps)  # no clamp: the noise is kept
    with pytest.raises(ValueError, match="regression"):
        schedule.predict_eps("regression", x_t, t, g, target)


def test_predict_x0_clamps_and_keeps_eps_consistent_with_x_t():
    _, schedule, g = _per_pixel()
    t = torch.tensor([100, 500, 900])
    x_t, eps = _images(5) * 3, _images(6)
    x0, eps_c = schedule.predict_x0(x_t, t, g, eps, clip=(-1.0, 0.5))
    assert float(x0.min()) >= -1.0 and float(x0.max()) <= 0.5 and not torch.equal(eps_c, eps)
    torch.testing.assert_close(schedule.q_sample(x0, t, eps_c, g), x_t, rtol=0, atol=1e-12)


def test_ddpm_posterior_is_bayes_rule_per_pixel():
    config, schedule, g = _per_pixel()
    t = torch.tensor([1, 250, 999])
    x0, x_t = _images(7), _images(8)
    mean, var = schedule.posterior(x_t, x0, t, g)
    # q(x_{t-1} | x_t, x0) ~ q(x_t | x_{t-1}) q(x_{t-1} | x0), two Gaussians in x_{t-1}, written from the
    # explicit per-pixel products: alpha_t(x) = abar_t(x) / abar_{t-1}(x), beta_t(x) = 1 - alpha_t(x)
    abar, abar_prev = _explicit_alpha_bar(config, g, t), _explicit_alpha_bar(config, g, t - 1)
    alpha = abar / abar_prev
    precision = alpha / (1 - alpha) + 1 / (1 - abar_prev)
    want_mean = (alpha.sqrt() * x_t / (1 - alpha) + abar_prev.sqrt() * x0 / (1 - abar_prev)) / precision
    torch.testing.assert_close(var, 1 / precision, rtol=1e-8, atol=0)
    torch.testing.assert_close(mean, want_mean, rtol=0, atol=1e-8)
    # at t = 0 the posterior is x0 itself
    mean0, var0 = schedule.posterior(x_t, x0, torch.zeros(3, dtype=torch.long), g)
    torch.testing.assert_close(mean0, x0, rtol=0, atol=1e-12)
    assert float(var0.abs().max()) < 1e-15


def test_ddim_update_is_the_forward_process_at_eta_0_and_the_ddpm_posterior_at_eta_1():
    _, schedule, g = _per_pixel()
    t = torch.tensor([1, 250, 999])
    x0, eps = _images(9), _images(10)
    # eta = 0: deterministic, the same noise carried to the less noisy step
    t_next = torch.tensor([0, 100, 500])
    mean, sigma = schedule.ddim_posterior(x0, eps, t, t_next, g, eta=0.0)
    assert torch.equal(sigma, torch.zeros_like(sigma))
    torch.testing.assert_close(mean, schedule.q_sample(x0, t_next, eps, g), rtol=0, atol=1e-12)
    # eta = 1 over one step: the DDPM posterior of the x_t that x0 and eps make
    x_t = schedule.q_sample(x0, t, eps, g)
    mean, sigma = schedule.ddim_posterior(x0, eps, t, t - 1, g, eta=1.0)
    want_mean, want_var = schedule.posterior(x_t, x0, t, g)
    torch.testing.assert_close(sigma**2, want_var, rtol=1e-8, atol=1e-15)
    torch.testing.assert_close(mean, want_mean, rtol=0, atol=1e-9)
