"""Samplers for the per-pixel (physics-guided) DDPM: ancestral DDPM and DDIM, from noise or SDEdit.

A sampler drives ``eps_fn(x_t, t) -> eps`` (x_t (B, 1, H, W) float32, t (B,) int64) with the per-pixel
schedule of :class:`~.schedule.PhysicsSchedule` and the sample's excess beta ``g`` (B, 1, H, W) (None =
plain DDPM); the schedule does the maths (x0 from eps, the DDPM posterior, the DDIM update), this module
only the loops. Everything runs batched; the noise comes from one ``torch.Generator`` on the images' device,
so a seed fixes the result on a given device. A sequence of B generators (one per sample) instead draws
each sample's noise from its own generator, so a sample's result does not depend on the batch it is in.

Starts: ``"noise"`` = pure Gaussian noise at t = T - 1; ``"sdedit"`` = the reference image (the b0 slice)
noised by the physics-guided forward process to ``t0 = round(strength * T) - 1`` (the official inference:
strength 0.8 -> t0 = 799, then every step down to 0 for DDPM).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Literal, Sequence, Union

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .config import JsonConfig
from .schedule import PhysicsSchedule, clip_range
from .shifts import SHIFT_COUNTS

log = logging.getLogger(__name__)

EpsFn = Callable[[Tensor, Tensor], Tensor]
Generators = Union[torch.Generator, Sequence[torch.Generator], None]


@dataclass(frozen=True)
class SamplerConfig(JsonConfig):
    """How to sample.

    ``method``: ``"ddpm"`` (ancestral, every step from the start; ``steps`` ignored) or ``"ddim"`` (``steps``
    model evaluations, ``eta`` = 0 deterministic, 1 = DDPM-like noise). ``clip_x0``: clamp the predicted
    x0 at each step to [-clip_x0, clip_x0], or to [low, high] for a pair (None = no clamp; intensities
    above the 99.5th percentile exceed 1 in this project's normalisation, so clamping is off by default).
    ``shifts``: network passes averaged at every step, each on the input moved in-plane against the model's
    token grid (:mod:`.shifts`; 1 = one pass, 2 = also by half a patch along both axes, 4 = all four
    half-patch offsets; None = the model's own choice, ``PhyDiff.shifts``). It costs that many network
    evaluations per step.
    ``progress``: a tqdm bar (None = only on a terminal). ``to_dict`` / ``from_dict``: see
    :class:`~.config.JsonConfig`.
    """

    method: Literal["ddpm", "ddim"] = "ddim"
    steps: int = 50
    eta: float = 0.0
    start: Literal["noise", "sdedit"] = "sdedit"
    strength: float = 0.8
    clip_x0: float | tuple[float, float] | None = None
    shifts: int | None = None
    progress: bool | None = None

    def __post_init__(self) -> None:
        if self.method not in ("ddpm", "ddim"):
            raise ValueError(f"sampler method must be 'ddpm' or 'ddim', got {self.method!r}")
        if self.start not in ("noise", "sdedit"):
            raise ValueError(f"sampler start must be 'noise' or 'sdedit', got {self.start!r}")
        if self.steps < 1:
            raise ValueError(f"sampler steps must be >= 1, got {self.steps}")
        if self.eta < 0:
            raise ValueError(f"eta must be >= 0, got {self.eta}")
        if self.shifts is not None and self.shifts not in SHIFT_COUNTS:
            raise ValueError(f"sampler shifts must be one of {SHIFT_COUNTS}, got {self.shifts}")
        if not 0.0 < self.strength <= 1.0:
            raise ValueError(f"SDEdit strength must be in (0, 1], got {self.strength}")
        if self.clip_x0 is not None:
            low, high = clip_range(self.clip_x0)
            if not low < high:
                raise ValueError(f"clip_x0 must be positive or a pair (low < high), got {self.clip_x0}")


def start_step(config: SamplerConfig, num_steps: int) -> int:
    """The first (noisiest) timestep of the reverse process."""
    if config.start == "noise":
        return num_steps - 1
    return max(0, min(num_steps - 1, round(config.strength * num_steps) - 1))


def timesteps(config: SamplerConfig, num_steps: int) -> list[int]:
    """Descending timesteps the model is evaluated at."""
    first = start_step(config, num_steps)
    if config.method == "ddpm":
        return list(range(first, -1, -1))
    count = min(config.steps, first + 1)
    if count == 1:
        return [first]
    grid = torch.linspace(first, 0, count, dtype=torch.float64).round().long().tolist()
    return sorted(set(grid), reverse=True)


def _randn(
    shape: tuple[int, ...], generator: Generators, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """Standard normal noise of ``shape``; a sequence of generators draws sample ``i`` from ``generator[i]``."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)
    generators = list(generator)
    if len(generators) != shape[0]:
        raise ValueError(f"{len(generators)} generators for a batch of {shape[0]}")
    return torch.stack([torch.randn(shape[1:], generator=g, device=device, dtype=dtype) for g in generators])


def _noise_like(x: Tensor, generator: Generators) -> Tensor:
    return _randn(tuple(x.shape), generator, x.device, x.dtype)


def _steps_bar(steps: list[int], progress: bool | None, what: str):
    disable = None if progress is None else not progress
    return tqdm(steps, desc=what, disable=disable, leave=False)


def ddpm_loop(
    eps_fn: EpsFn,
    schedule: PhysicsSchedule,
    g: Tensor | None,
    x: Tensor,
    first: int,
    generator: Generators = None,
    clip_x0: float | tuple[float, float] | None = None,
    progress: bool | None = None,
) -> Tensor:
    """Ancestral sampling from x at step ``first`` down to 0, with per-pixel alphas; returns x0."""
    batch = x.shape[0]
    for step in _steps_bar(list(range(first, -1, -1)), progress, "DDPM"):
        t = torch.full((batch,), step, device=x.device, dtype=torch.long)
        eps = eps_fn(x, t).to(x.dtype)
        x0, _ = schedule.predict_x0(x, t, g, eps, clip_x0)
        x, variance = schedule.posterior(x, x0, t, g)
        if step > 0:
            x = x + variance.sqrt() * _noise_like(x, generator)
    return x


def ddim_loop(
    eps_fn: EpsFn,
    schedule: PhysicsSchedule,
    g: Tensor | None,
    x: Tensor,
    steps: list[int],
    eta: float = 0.0,
    generator: Generators = None,
    clip_x0: float | tuple[float, float] | None = None,
    progress: bool | None = None,
) -> Tensor:
    """DDIM over the descending ``steps`` (x is at ``steps[0]``), per-pixel alpha-bars; returns x0."""
    batch = x.shape[0]
    for i, step in enumerate(_steps_bar(steps, progress, "DDIM")):
        t = torch.full((batch,), step, device=x.device, dtype=torch.long)
        eps = eps_fn(x, t).to(x.dtype)
        x0, eps = schedule.predict_x0(x, t, g, eps, clip_x0)
        if i + 1 == len(steps):
            return x0
        x, sigma = schedule.ddim_posterior(x0, eps, t, torch.full_like(t, steps[i + 1]), g, eta)
        if eta > 0:
            x = x + sigma * _noise_like(x, generator)
    return x


def sample(
    eps_fn: EpsFn,
    schedule: PhysicsSchedule,
    g: Tensor | None,
    shape: tuple[int, ...],
    config: SamplerConfig = SamplerConfig(),
    reference: Tensor | None = None,
    generator: Generators = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Run ``config``'s sampler; returns x0 (``shape``, float32).

    ``reference`` (``shape``): the image SDEdit starts from (the b0 slice in [-1, 1]); required for
    ``start="sdedit"``. ``generator``: on the sampling device (see :func:`make_generator`), or a sequence
    of ``shape[0]`` such generators, one per sample.
    """
    if device is None:
        device = reference.device if reference is not None else (g.device if g is not None else "cpu")
    device = torch.device(device)
    steps = timesteps(config, schedule.num_steps)
    first = steps[0]
    noise = _randn(tuple(shape), generator, device, torch.float32)
    if config.start == "noise":
        x = noise
    else:
        if reference is None:
            raise ValueError("SDEdit sampling needs the reference image (the b0 slice)")
        if tuple(reference.shape) != tuple(shape):
            raise ValueError(f"reference {tuple(reference.shape)} does not match the sample shape {tuple(shape)}")
        t0 = torch.full((shape[0],), first, device=device, dtype=torch.long)
        x = schedule.q_sample(reference.to(device, torch.float32), t0, noise, g)
    log.debug("sampling %s with %s from t=%d (%d model evaluations)", tuple(shape), config.method, first, len(steps))
    if config.method == "ddpm":
        return ddpm_loop(eps_fn, schedule, g, x, first, generator, config.clip_x0, config.progress)
    return ddim_loop(eps_fn, schedule, g, x, steps, config.eta, generator, config.clip_x0, config.progress)


def make_generator(seed: int, device: torch.device | str) -> torch.Generator:
    """A generator on ``device`` seeded with ``seed``."""
    return torch.Generator(device=torch.device(device)).manual_seed(int(seed))
