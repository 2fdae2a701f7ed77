"""Synthesise a DWI series from a b0 volume with a Phy-Diff model (DESIGN.md section 2, Synthesise).

Conventions (DESIGN.md section 4):

- Volumes are ``(X, Y, Z)`` on the bundle's template grid, in the subject's signal units; slices are axial
  (index ``z`` of the third axis) and are centred-padded in-plane to the model grid ``(H, W)`` of a
  :class:`~bids_phydiff.train.dataset.SliceGrid`, exactly as in training (b0 padded with -1 = zero signal
  after normalisation, ADC atlas and tracts with 0).
- Intensities: ``scale`` = 99.5th percentile of the b0 inside the mask
  (:class:`~bids_phydiff.train.normalise.Normaliser`); the model sees ``2 b0 / scale - 1`` and its samples
  are mapped back with ``(x + 1) scale / 2``, so outputs are in the b0's signal units and S_b / S_0 is kept.
- Targets: one sample per (diffusion-weighted target, axial slice); b0 targets (``b <= b0_threshold`` of
  the scheme) are copies of the input b0 (see :mod:`.scheme`). ADC for the target b-value: linear
  interpolation of the atlas between its shells, clamped to the shell range (warned once).
- Output: the padding is cropped; voxels outside the mask are set to 0 (the model is trained and judged in
  the brain only, and what it paints outside is noise), then negative values are clipped to 0 (magnitude
  signal). This holds for the b0 copies too, so the series is consistent.
- Slices whose mask is empty are not sampled (all zeros) when ``skip_empty`` (the default).
- Randomness: every (slice ``z``, target index ``n``, sample ``k``) has its own noise generator seeded from
  ``(seed, z, n, k)``, so the result depends only on the seed and the inputs on a given device -- not on
  the batch size, the order, nor on which other slices or targets are synthesised -- and sample ``k`` of a
  ``K``-sample run is the same image whatever ``K`` is.
- ``samples`` K > 1: the mean over the K samples and their standard deviation (ddof = 1, signal units);
  K = 1: ``std`` is None.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import NamedTuple, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..model.device import resolve_device
from ..model.phydiff import PhyDiff
from ..model.sampling import SamplerConfig, make_generator
from ..model.schedule import interpolate_adc
from ..train.dataset import SliceGrid
from ..train.normalise import Normaliser
from .batching import auto_batch_size
from .scheme import TargetScheme, check_shell_range

log = logging.getLogger(__name__)

__all__ = ["Synthesis", "sample_seed", "synthesise"]


class Synthesis(NamedTuple):
    """``mean`` ``(X, Y, Z, N)`` float32 in signal units; ``std`` the same shape, or None for one sample."""

    mean: np.ndarray
    std: np.ndarray | None


def sample_seed(seed: int, z: int, n: int, k: int) -> int:
    """The 64-bit seed of the noise of slice ``z``, target ``n``, sample ``k`` (numpy SeedSequence)."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    words = np.random.SeedSequence([int(seed), int(z), int(n), int(k)]).generate_state(2, np.uint32)
    return int(words[0]) << 32 | int(words[1])


def _as_scheme(scheme) -> TargetScheme:
    if isinstance(scheme, TargetScheme):
        return scheme
    bvals, bvecs = scheme
    return TargetScheme(bvals, bvecs, "arrays")


def _rate(items_done: int, per_volume: int, started: float) -> float:
    """Volumes per second so far."""
    return items_done / per_volume / max(time.perf_counter() - started, 1e-9)


def _model_device(model: PhyDiff) -> torch.device:
    return next(model.parameters()).device


def synthesise(
    model: PhyDiff,
    b0: np.ndarray,
    mask: np.ndarray,
    scheme: TargetScheme | tuple[np.ndarray, np.ndarray],
    adc_atlas: np.ndarray | None,
    shells: Sequence[float],
    grid: SliceGrid | None = None,
    sampler: SamplerConfig = SamplerConfig(),
    *,
    samples: int = 1,
    batch_size: int | None = 32,
    seed: int = 0,
    device: str | torch.device | None = None,
    tracts: np.ndarray | None = None,
    precision: str = "fp32",
    skip_empty: bool = True,
    progress: bool | None = None,
    context: np.ndarray | None = None,
) -> Synthesis:
    """Synthesise every target of ``scheme`` for every axial slice.

    ``model``: a :class:`~bids_phydiff.model.PhyDiff` (e.g. ``load_bundle(...).model``). ``b0`` ``(X, Y, Z)``
    signal units; ``mask`` ``(X, Y, Z)`` (nonzero = brain); ``scheme``: a :class:`.TargetScheme` or
    ``(bvals (N,), bvecs (N, 3))`` in FSL convention of the grid. ``adc_atlas`` ``(X, Y, Z, S)`` mm^2/s for
    ``shells`` ``(S,)`` s/mm^2 (the bundle's ``adc_atlas.nii.gz`` and ``b_shells``); None only for a model
    without the physics term (``schedule.gap == 0``). ``grid``: the padded slice grid (default: the
    model's multiple, :func:`.grid.slice_grid`). ``sampler``: method (``ddpm``/``ddim``), steps, eta, start
    (``sdedit`` from the noised b0 with ``strength``, or ``noise``); its own progress bar is switched off.
    ``samples``: K draws per target. ``batch_size``: (slice, target, sample) items per model call, of any
    volumes (None: :func:`.batching.auto_batch_size`).
    ``seed``: see the module docstring. ``device``: None = where the model is (else the model is moved
    there). A regression-objective model (``config.objective == "regression"``) ignores ``sampler`` and
    ``seed`` and predicts each slice in one forward pass. ``tracts`` ``(X, Y, Z, C)`` tract probabilities for the XTRACT adapter (optional).
    ``precision``: ``"fp32"`` or ``"bf16"`` autocast. ``progress``: a tqdm bar over items (None = only on a
    terminal). ``context`` ``(X, Y, Z, C)``: the context maps of the run (:mod:`bids_phydiff.prep.context`),
    required exactly for a model with a context (``config.context``). Returns :class:`Synthesis` ``(mean, std)``.
    """
    b0 = np.asarray(b0, dtype=np.float32)
    mask = np.asarray(mask) > 0
    if b0.ndim != 3:
        raise ValueError(f"the b0 must be a 3-D volume (X, Y, Z), got shape {b0.shape}")
    if mask.shape != b0.shape:
        raise ValueError(f"mask {mask.shape} and b0 {b0.shape} differ in shape")
    if not np.all(np.isfinite(b0[mask])):
        raise ValueError("the b0 has NaN or Inf values inside the mask")
    if samples < 1 or (batch_size is not None and batch_size < 1):
        raise ValueError(f"samples and batch_size must be >= 1, got {samples}, {batch_size}")
    scheme = _as_scheme(scheme)
    multiple = model.config.backbone.size_multiple
    grid = grid if grid is not None else SliceGrid.for_multiple(b0.shape, multiple)
    if tuple(grid.shape) != b0.shape:
        raise ValueError(f"the b0 {b0.shape} is not on the slice grid {tuple(grid.shape)}")
    if any(p % multiple or p < s for p, s in zip(grid.padded, grid.shape[:2])):
        raise ValueError(f"padded slice size {grid.padded} must cover {grid.shape[:2]} in multiples of {multiple}")

    shells = np.asarray(shells, dtype=np.float64).reshape(-1)
    atlas = None
    if adc_atlas is not None:
        adc_atlas = np.asarray(adc_atlas, dtype=np.float32)
        if adc_atlas.ndim == 3:
            adc_atlas = adc_atlas[..., None]
        if adc_atlas.shape != b0.shape + (shells.size,):
            raise ValueError(f"ADC atlas {adc_atlas.shape} does not match the grid {b0.shape} x {shells.size} shells")
        order = np.argsort(shells)
        shells = shells[order]
        # (S, X, Y, Z) -> (S, Z, X, Y) -> padded (S, Z, H, W)
        atlas = grid.pad(np.moveaxis(adc_atlas[..., order], -1, 0).transpose(0, 3, 1, 2))
    elif model.schedule.gap > 0 and not model.is_regression:
        raise ValueError("this model uses the physics-guided schedule: the ADC atlas is required")
    tracts_p = None
    if tracts is not None:
        tracts = np.asarray(tracts, dtype=np.float32)
        if tracts.ndim != 4 or tracts.shape[:3] != b0.shape:
            raise ValueError(f"tracts must be (X, Y, Z, C) on the grid {b0.shape}, got {tracts.shape}")
        if model.adapter is None:
            log.info("the model has no XTRACT adapter: the tract condition is not used")
        elif tracts.shape[3] != model.config.adapter.in_channels:
            raise ValueError(
                f"the model's XTRACT adapter takes {model.config.adapter.in_channels} tract channels, "
                f"got {tracts.shape[3]}"
            )
        else:
            tracts_p = grid.pad(tracts.transpose(3, 2, 0, 1))  # (C, Z, H, W)
    elif model.adapter is not None:
        log.warning("the model has an XTRACT adapter but no tract condition was given: backbone only")
    context_p = None
    if (context is None) != (model.config.context == "none"):
        raise ValueError(f"the model's context is {model.config.context!r}: context maps must be given "
                         f"exactly when it is not 'none'")
    if context is not None:
        context = np.asarray(context, dtype=np.float32)
        if context.ndim != 4 or context.shape[:3] != b0.shape:
            raise ValueError(f"context must be (X, Y, Z, C) on the grid {b0.shape}, got {context.shape}")
        context_p = grid.pad(context.transpose(2, 3, 0, 1))  # (Z, C, H, W), 0 outside the brain

    norm = Normaliser.from_b0(b0, mask)
    X, Y, Z = b0.shape
    n_targets = len(scheme)
    mean = np.zeros((X, Y, Z, n_targets), dtype=np.float32)
    std = np.zeros_like(mean) if samples > 1 else None
    reference = np.clip(np.where(mask, b0, 0.0), 0.0, None).astype(np.float32)
    mean[..., scheme.b0_mask] = reference[..., None]

    dw = scheme.dw_index
    slices = [z for z in range(Z) if mask[:, :, z].any()] if skip_empty else list(range(Z))
    items = [(z, int(n), k) for z in slices for n in dw for k in range(samples)]
    if not items:
        log.info("nothing to sample (%d diffusion-weighted targets, %d slices)", dw.size, len(slices))
        return Synthesis(mean, std)
    if shells.size:
        check_shell_range(scheme, shells)
    elif atlas is not None:
        raise ValueError("the ADC atlas needs its b-shells")

    dev = _model_device(model) if device is None else resolve_device(device)
    if _model_device(model) != dev:
        model.to(dev)
    inner = dataclasses.replace(sampler, progress=False)
    b0_p = grid.pad(norm.forward(b0).transpose(2, 0, 1), -1.0)  # (Z, H, W) in [-1, 1]
    b_clamped = np.clip(scheme.bvals, shells[0], shells[-1]) if shells.size else scheme.bvals
    positions = grid.position(np.arange(Z))

    def sample_items(batch: list[tuple[int, int, int]], how: SamplerConfig) -> torch.Tensor:
        """One model call on ``batch``'s items: ``(B, 1, H, W)`` normalised samples."""
        zs = [z for z, _, _ in batch]
        ns = [n for _, n, _ in batch]
        b0_t = torch.from_numpy(b0_p[zs][:, None].copy()).to(dev)
        bval = torch.tensor(scheme.bvals[ns], dtype=torch.float32, device=dev)
        bvec = torch.tensor(scheme.bvecs[ns], dtype=torch.float32, device=dev)
        pos = torch.tensor(positions[zs], dtype=torch.float32, device=dev)
        adc = None
        if atlas is not None:
            cache: dict[tuple[int, int], np.ndarray] = {}
            for z, n in zip(zs, ns):
                if (z, n) not in cache:
                    cache[(z, n)] = interpolate_adc(atlas[:, z], shells, float(b_clamped[n]))
            adc = torch.from_numpy(np.stack([cache[(z, n)] for z, n in zip(zs, ns)])[:, None]).to(dev)
        cond = None if tracts_p is None else torch.from_numpy(tracts_p[:, zs].transpose(1, 0, 2, 3).copy()).to(dev)
        generators = [make_generator(sample_seed(seed, z, n, k), dev) for z, n, k in batch]
        ctx = None if context_p is None else torch.from_numpy(context_p[zs]).to(dev)
        return model.sample(b0_t, bval, bvec, pos, adc, cond, sampler=how, generator=generators,
                            precision=precision, context=ctx)

    if batch_size is None:  # the memory of one call does not depend on the number of steps
        probe = dataclasses.replace(inner, method="ddim", steps=1)
        batch_size = auto_batch_size(dev, len(items), lambda n: sample_items(items[:n], probe))
    log.info(
        "synthesising %d target(s) (%d sampled) on %d slice(s) x %d sample(s): %d items, %s %s steps, "
        "batch %d, seed %d, on %s (b0 scale %.6g)",
        n_targets, dw.size, len(slices), samples, len(items), sampler.method,
        sampler.steps if sampler.method == "ddim" else "all", batch_size, seed, dev, norm.scale,
    )

    pending: dict[tuple[int, int], list[np.ndarray]] = {}
    per_volume = len(slices) * samples  # items of one synthesised volume
    started = time.perf_counter()
    bar = tqdm(total=len(items), desc="synthesis", unit="slice", disable=None if progress is None else not progress)
    try:
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            out = sample_items(batch, inner)
            images = grid.crop(norm.inverse(out[:, 0].detach().to("cpu", torch.float64).numpy()))  # (B, X, Y)
            for (z, n, _), image in zip(batch, images):
                image = np.clip(np.where(mask[:, :, z], image, 0.0), 0.0, None)
                done = pending.setdefault((z, n), [])
                done.append(image)
                if len(done) == samples:
                    stack = np.stack(done)
                    mean[:, :, z, n] = stack.mean(axis=0)
                    if std is not None:
                        std[:, :, z, n] = stack.std(axis=0, ddof=1)
                    del pending[(z, n)]
            bar.update(len(batch))
            bar.set_postfix_str(f"{_rate(start + len(batch), per_volume, started):.3g} volumes/s", refresh=False)
    finally:
        bar.close()
    log.info("synthesised %d volume(s) in %.1f s (%.3g volumes/s)", dw.size, time.perf_counter() - started,
             _rate(len(items), per_volume, started))
    if not np.all(np.isfinite(mean)):
        log.warning("the synthesis has non-finite values; the model may be untrained or diverged")
    return Synthesis(mean, std)
