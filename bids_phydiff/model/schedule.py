"""The physics-guided per-pixel noise schedule (paper Eq. 5) and ADC interpolation between shells.

Conventions: timesteps are 0-based, ``t`` in ``[0, T)``; ``alpha_bar[t] = prod_{i <= t} (1 - beta_i)``.
b in s/mm^2, ADC in mm^2/s (so b * ADC is dimensionless). Images (B, 1, H, W).

Physics term, as the official code realises Eq. 5: for a target b-value b and the ADC-atlas slice D(x),
``s(x)`` = per-sample min-max of ``exp(-2 b D(x))`` to [0, 1], and every step's beta gets an extra
``g(x) = gap * (1 - s(x))``: fast-diffusing tissue (CSF: high ADC, low signal at b) is noised faster.
``gap = 0`` is plain DDPM, bit for bit.

Exact per-pixel alpha-bar without a per-pixel loop over t: with c_i = 1 - beta_i,

    log prod_{i<=t} (c_i - g) = log alpha_bar_lin[t] - sum_{n>=1} g^n / n * sum_{i<=t} c_i^{-n}

The inner sums are tabulated once (float64, (terms, T)); the series in g (<= gap < 0.5, and g / c_i is
about 1e-3 by default) is cut where the remainder is below 1e-17, i.e. exact in float64.

The diffusion maths lives here too, one method per formula, all per pixel: the forward process
(:meth:`PhysicsSchedule.q_sample`), the conversions between x0, the noise eps and
v = sqrt(abar) eps - sqrt(1 - abar) x0, what each objective regresses (:meth:`~PhysicsSchedule.loss_target`),
the DDPM posterior q(x_{t-1} | x_t, x0) and the DDIM update. The samplers (:mod:`.sampling`) only loop.
"""

from __future__ import annotations

import logging
from typing import overload

import numpy as np
import torch
from torch import Tensor

from .config import DIFFUSION_OBJECTIVES, ScheduleConfig

log = logging.getLogger(__name__)

__all__ = ["PhysicsSchedule", "clip_range", "interpolate_adc", "linear_betas"]


def linear_betas(config: ScheduleConfig) -> Tensor:
    """The linear betas (T,), float64 on CPU."""
    return torch.linspace(config.beta_start, config.beta_end, config.num_steps, dtype=torch.float64)


def clip_range(clip: float | tuple[float, float]) -> tuple[float, float]:
    """(low, high) of an x0 clamp given as a bound c (-> (-c, c)) or a pair."""
    if isinstance(clip, (tuple, list)):
        return float(clip[0]), float(clip[1])
    return -float(clip), float(clip)


def _series_terms(config: ScheduleConfig) -> int:
    """Number of series terms so that the truncation error of log alpha-bar is below 1e-17."""
    if config.gap == 0.0:
        return 0
    ratio = config.gap / (1.0 - config.beta_end)  # >= g / c_i for every pixel and step
    for m in range(1, 2000):
        bound = config.num_steps * ratio ** (m + 1) / ((m + 1) * (1.0 - ratio))
        if bound < 1e-17:
            return m
    raise ValueError(f"gap {config.gap} too large for an exact per-pixel schedule")


class PhysicsSchedule:
    """Per-pixel DDPM schedule. Not an ``nn.Module``: its float64 tables must never be cast with the model.

    All per-pixel quantities take ``g`` = :meth:`excess_beta` (B, 1, H, W), float64, and timesteps ``t``
    (B,) int64; they return float64 (B, 1, H, W).
    """

    def __init__(self, config: ScheduleConfig) -> None:
        self.config = config
        self.betas = linear_betas(config)
        self.alpha_bars = torch.cumprod(1.0 - self.betas, dim=0)
        terms = _series_terms(config)
        c = 1.0 - self.betas
        orders = torch.arange(1, terms + 1, dtype=torch.float64)[:, None]
        # row n-1: (1/n) * cumulative sum of c_i^(-n)
        self.series = torch.cumsum(c[None, :] ** (-orders), dim=1) / orders  # (terms, T)
        self._on_device: dict[torch.device, tuple[Tensor, Tensor, Tensor]] = {}

    @property
    def num_steps(self) -> int:
        return self.config.num_steps

    @property
    def gap(self) -> float:
        return self.config.gap

    def _tables(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        if device not in self._on_device:
            with torch.inference_mode(False):
                self._on_device[device] = (
                    self.betas.to(device),
                    self.alpha_bars.to(device),
                    self.series.to(device),
                )
        return self._on_device[device]

    # ----------------------------------------------------------------------------------- physics term

    def structure(self, adc: Tensor, bval: Tensor) -> Tensor:
        """s(x) in [0, 1], (B, 1, H, W) float64: per-sample min-max of exp(-2 b ADC).

        A sample whose exp(-2 b ADC) is constant (b = 0, or a flat ADC) gets s = 1: no extra noise.
        """
        if adc.ndim != 4 or adc.shape[1] != 1:
            raise ValueError(f"adc must be (B, 1, H, W), got {tuple(adc.shape)}")
        b = torch.as_tensor(bval, dtype=torch.float64, device=adc.device).reshape(-1, 1, 1, 1)
        if b.shape[0] != adc.shape[0]:
            raise ValueError(f"bval has {b.shape[0]} entries for a batch of {adc.shape[0]}")
        signal = torch.exp(-2.0 * b * adc.to(torch.float64))
        low = signal.amin(dim=(1, 2, 3), keepdim=True)
        span = signal.amax(dim=(1, 2, 3), keepdim=True) - low
        flat = span <= 1e-12
        return torch.where(flat, torch.ones_like(signal), (signal - low) / torch.where(flat, 1.0, span))

    def excess_beta(self, adc: Tensor | None, bval: Tensor | None) -> Tensor | None:
        """g(x) = gap * (1 - s(x)), (B, 1, H, W) float64; None when there is no physics term."""
        if adc is None or bval is None:
            return None
        return self.gap * (1.0 - self.structure(adc, bval))

    # ----------------------------------------------------------------------------------- per-pixel tables

    @staticmethod
    def _device(t: Tensor, g: Tensor | None) -> torch.device:
        """Where the per-pixel tables are computed: g's device, else t's."""
        return g.device if g is not None else torch.as_tensor(t).device

    def _index(self, t: Tensor, device: torch.device) -> Tensor:
        t = torch.as_tensor(t).long().reshape(-1)
        # checked only where it costs no device sync and no graph break
        if t.device.type == "cpu" and not torch.compiler.is_compiling() and t.numel() and (
            int(t.min()) < 0 or int(t.max()) >= self.num_steps
        ):
            raise ValueError(f"timesteps must be in [0, {self.num_steps}), got {t.min().item()}..{t.max().item()}")
        return t.to(device)

    def alpha_bar(self, t: Tensor, g: Tensor | None) -> Tensor:
        """alpha-bar_t(x) = prod_{i<=t} (1 - beta_i - g(x)); (B, 1, H, W), or (B, 1, 1, 1) when g is None."""
        device = self._device(t, g)
        _, alpha_bars, series = self._tables(device)
        t = self._index(t, device)
        base = alpha_bars[t].reshape(-1, 1, 1, 1)
        if g is None or series.shape[0] == 0:
            return base if g is None else base * torch.ones_like(g)
        coeffs = series[:, t]  # (terms, B)
        # Horner in g for sum_n g^n * coeffs[n-1]
        acc = torch.zeros_like(g)
        for n in range(series.shape[0] - 1, -1, -1):
            acc = (acc + coeffs[n].reshape(-1, 1, 1, 1)) * g
        return base * torch.exp(-acc)

    def alpha_bar_prev(self, t: Tensor, g: Tensor | None) -> Tensor:
        """alpha-bar_{t-1}(x), with alpha-bar_{-1} = 1."""
        device = self._device(t, g)
        t = self._index(t, device)
        prev = self.alpha_bar((t - 1).clamp(min=0), g)
        first = (t == 0).reshape(-1, 1, 1, 1)
        return torch.where(first, torch.ones_like(prev), prev)

    def beta(self, t: Tensor, g: Tensor | None) -> Tensor:
        """beta_t(x) = linear beta_t + g(x)."""
        device = self._device(t, g)
        betas, _, _ = self._tables(device)
        base = betas[self._index(t, device)].reshape(-1, 1, 1, 1)
        return base if g is None else base + g

    # ----------------------------------------------------------------------------------- diffusion maths
    # x_t = a x0 + s eps with a = sqrt(abar_t(x)), s = sqrt(1 - abar_t(x)); images (B, 1, H, W) in any float
    # dtype, t (B,) int64, g as above. Coefficients are computed in float64 and cast to the images' dtype.

    def scales(self, t: Tensor, g: Tensor | None, like: Tensor) -> tuple[Tensor, Tensor]:
        """a = sqrt(abar_t(x)) and s = sqrt(1 - abar_t(x)) in ``like``'s dtype, (B, 1, H, W) ((B, 1, 1, 1) when
        g is None); ``t`` is moved to ``like``'s device."""
        abar = self.alpha_bar(torch.as_tensor(t).to(like.device), g)
        return abar.sqrt().to(like.dtype), (1.0 - abar).sqrt().to(like.dtype)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor, g: Tensor | None) -> Tensor:
        """x_t = sqrt(abar_t(x)) x0 + sqrt(1 - abar_t(x)) noise."""
        if x0.shape != noise.shape:
            raise ValueError(f"x0 {tuple(x0.shape)} and noise {tuple(noise.shape)} differ in shape")
        a, s = self.scales(t, g, x0)
        return a * x0 + s * noise

    def x0_from_eps(self, x_t: Tensor, t: Tensor, g: Tensor | None, eps: Tensor) -> Tensor:
        """x0 = (x_t - s eps) / a."""
        a, s = self.scales(t, g, x_t)
        return (x_t - s * eps) / a

    def eps_from_x0(self, x_t: Tensor, t: Tensor, g: Tensor | None, x0: Tensor) -> Tensor:
        """eps = (x_t - a x0) / s."""
        a, s = self.scales(t, g, x_t)
        return (x_t - a * x0) / s

    def velocity(self, x0: Tensor, eps: Tensor, t: Tensor, g: Tensor | None) -> Tensor:
        """v = a eps - s x0, the v-prediction target."""
        a, s = self.scales(t, g, x0)
        return a * eps - s * x0

    def eps_from_v(self, x_t: Tensor, t: Tensor, g: Tensor | None, v: Tensor) -> Tensor:
        """eps = s x_t + a v (a^2 + s^2 = 1)."""
        a, s = self.scales(t, g, x_t)
        return s * x_t + a * v

    def x0_from_v(self, x_t: Tensor, t: Tensor, g: Tensor | None, v: Tensor) -> Tensor:
        """x0 = a x_t - s v."""
        a, s = self.scales(t, g, x_t)
        return a * x_t - s * v

    def loss_target(self, objective: str, x0: Tensor, noise: Tensor, t: Tensor, g: Tensor | None) -> Tensor:
        """What a network trained with ``objective`` (see :data:`~.config.DIFFUSION_OBJECTIVES`) regresses at x_t =
        :meth:`q_sample` (x0, t, noise, g): x0, the noise, or v."""
        if objective == "x0":
            return x0
        if objective == "eps":
            return noise
        if objective == "v":
            return self.velocity(x0, noise, t, g)
        raise ValueError(f"no diffusion target for objective {objective!r}; expected one of {DIFFUSION_OBJECTIVES}")

    def predict_eps(self, objective: str, x_t: Tensor, t: Tensor, g: Tensor | None, out: Tensor) -> Tensor:
        """The noise implied by the output ``out`` of a network trained with ``objective`` at x_t (``out``
        itself for ``"eps"``)."""
        if objective == "eps":
            return out
        if objective == "x0":
            return self.eps_from_x0(x_t, t, g, out)
        if objective == "v":
            return self.eps_from_v(x_t, t, g, out)
        raise ValueError(f"no noise prediction for objective {objective!r}; expected one of {DIFFUSION_OBJECTIVES}")

    def predict_x0(
        self, x_t: Tensor, t: Tensor, g: Tensor | None, eps: Tensor, clip: float | tuple[float, float] | None = None
    ) -> tuple[Tensor, Tensor]:
        """x0 and eps for x_t and its noise ``eps``; with ``clip`` (see :func:`clip_range`) x0 is clamped and
        eps made consistent with it."""
        x0 = self.x0_from_eps(x_t, t, g, eps)
        if clip is None:
            return x0, eps
        x0 = x0.clamp(*clip_range(clip))
        return x0, self.eps_from_x0(x_t, t, g, x0)

    def posterior(self, x_t: Tensor, x0: Tensor, t: Tensor, g: Tensor | None) -> tuple[Tensor, Tensor]:
        """Mean and variance of the DDPM posterior q(x_{t-1} | x_t, x0), per pixel, in x_t's dtype:

        mean = sqrt(abar_{t-1}) beta_t / (1 - abar_t) x0 + sqrt(1 - beta_t) (1 - abar_{t-1}) / (1 - abar_t) x_t,
        variance = beta_t (1 - abar_{t-1}) / (1 - abar_t), with beta_t = beta_t(x) and abar_{-1} = 1.
        """
        abar = self.alpha_bar(t, g)
        abar_prev = self.alpha_bar_prev(t, g)
        beta = self.beta(t, g)
        c0 = (abar_prev.sqrt() * beta / (1.0 - abar)).to(x_t.dtype)
        ct = ((1.0 - beta).sqrt() * (1.0 - abar_prev) / (1.0 - abar)).to(x_t.dtype)
        variance = (beta * (1.0 - abar_prev) / (1.0 - abar)).to(x_t.dtype)
        return c0 * x0 + ct * x_t, variance

    def ddim_posterior(
        self, x0: Tensor, eps: Tensor, t: Tensor, t_next: Tensor, g: Tensor | None, eta: float
    ) -> tuple[Tensor, Tensor]:
        """Mean and standard deviation sigma of x at the less noisy step ``t_next`` < ``t`` given x0 and eps
        (DDIM; ``eta`` = 0 deterministic, 1 = the DDPM posterior's variance over the jump), in x0's dtype:

        sigma = eta sqrt((1 - abar_next) / (1 - abar) (1 - abar / abar_next)),
        mean = sqrt(abar_next) x0 + sqrt(1 - abar_next - sigma^2) eps.
        """
        abar = self.alpha_bar(t, g)
        abar_next = self.alpha_bar(t_next, g)
        sigma = eta * ((1.0 - abar_next) / (1.0 - abar) * (1.0 - abar / abar_next)).clamp_min(0.0).sqrt()
        direction = (1.0 - abar_next - sigma**2).clamp_min(0.0).sqrt()
        mean = abar_next.sqrt().to(x0.dtype) * x0 + direction.to(x0.dtype) * eps
        return mean, sigma.to(x0.dtype)


# --------------------------------------------------------------------------------------------------
# ADC for a b-value between atlas shells


@overload
def interpolate_adc(adc_shells: np.ndarray, shells, b, *, clamp: bool = True) -> np.ndarray: ...
@overload
def interpolate_adc(adc_shells: Tensor, shells, b, *, clamp: bool = True) -> Tensor: ...


def interpolate_adc(adc_shells, shells, b, *, clamp: bool = True):
    """ADC map for b-value(s) ``b`` by linear interpolation between atlas shells.

    ``adc_shells``: (S, ...) one ADC map per shell (mm^2/s), ndarray or Tensor; ``shells``: (S,) strictly
    increasing b-values (s/mm^2). ``b``: a number -> (...), or a 1-D sequence of B values -> (B, ...).
    Outside [shells[0], shells[-1]] the nearest shell is used and a warning logged when ``clamp``;
    ValueError otherwise. The result has the type, device and float dtype of ``adc_shells``.
    """
    is_tensor = isinstance(adc_shells, Tensor)
    shells_np = np.asarray(shells.detach().cpu() if isinstance(shells, Tensor) else shells, dtype=np.float64)
    if shells_np.ndim != 1 or shells_np.size == 0:
        raise ValueError(f"shells must be a non-empty 1-D sequence, got shape {shells_np.shape}")
    if shells_np.size > 1 and not np.all(np.diff(shells_np) > 0):
        raise ValueError(f"shells must be strictly increasing, got {shells_np.tolist()}")
    if adc_shells.shape[0] != shells_np.size:
        raise ValueError(f"adc_shells has {adc_shells.shape[0]} maps for {shells_np.size} shells")
    b_np = np.asarray(b.detach().cpu() if isinstance(b, Tensor) else b, dtype=np.float64)
    scalar = b_np.ndim == 0
    b_np = b_np.reshape(-1)
    if not np.all(np.isfinite(b_np)):
        raise ValueError(f"b-values must be finite, got {b_np.tolist()}")
    outside = (b_np < shells_np[0]) | (b_np > shells_np[-1])
    if outside.any():
        message = (
            f"b-value(s) {sorted(set(b_np[outside].tolist()))} outside the range of the atlas shells "
            f"({', '.join(f'{s:g}' for s in shells_np)} s/mm^2)"
        )
        if not clamp:
            raise ValueError(message)
        log.warning("%s: using the nearest shell's ADC", message)
    bc = np.clip(b_np, shells_np[0], shells_np[-1])
    hi = np.clip(np.searchsorted(shells_np, bc, side="right"), 1, max(shells_np.size - 1, 1))
    lo = hi - 1
    if shells_np.size == 1:
        lo = hi = np.zeros_like(hi)
        weight = np.zeros_like(bc)
    else:
        weight = (bc - shells_np[lo]) / (shells_np[hi] - shells_np[lo])

    if is_tensor:
        w = torch.as_tensor(weight, dtype=adc_shells.dtype, device=adc_shells.device)
        w = w.reshape((-1,) + (1,) * (adc_shells.ndim - 1))
        a, c = adc_shells[torch.as_tensor(lo)], adc_shells[torch.as_tensor(hi)]
        out = a + w * (c - a)
    else:
        adc = np.asarray(adc_shells)
        dtype = adc.dtype if np.issubdtype(adc.dtype, np.floating) else np.float64
        w = weight.astype(dtype).reshape((-1,) + (1,) * (adc.ndim - 1))
        a, c = adc[lo].astype(dtype), adc[hi].astype(dtype)
        out = a + w * (c - a)
    return out[0] if scalar else out

