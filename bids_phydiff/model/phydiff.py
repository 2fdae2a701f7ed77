"""The Phy-Diff model: conditioning + HDiT backbone + optional XTRACT adapter + physics-guided schedule.

Training target: at a uniformly drawn step t of the per-pixel forward process of paper Eq. 5, the MSE of
what ``config.objective`` names: the clean slice x0 (the presets), the noise (``"eps"``, paper Eq. 6) or
v = sqrt(abar) eps - sqrt(1 - abar) x0; the samplers always receive the implied noise (:meth:`predict_eps`).
The targets and conversions are the schedule's (:class:`~.schedule.PhysicsSchedule`).
Images are (B, 1, H, W) already normalised to [-1, 1] (DESIGN.md section 4); the model never sees files.
Conditions per sample: b-value (s/mm^2), unit b-vector (FSL convention of the template grid), slice
position in [0, 1], and for the physics term the ADC-atlas slice for that b-value (mm^2/s, see
:func:`~.schedule.interpolate_adc`); optionally the tract condition (B, 42, H, W). A model with a context
(``config.context`` ``"dti"`` or ``"sh4"``) also takes the context maps (B, C, H, W) of the run's acquired
shell (:mod:`bids_phydiff.prep.context`, 0 outside the brain), concatenated after x_t and the b0, with the
channels the model derives from them for the target gradient (:mod:`.context`).

With ``config.objective == "regression"`` the same network is a deterministic regressor instead: its
input is x_t = 0 at t = 0 (the b0 is the other channel), its output is read as the target slice, the loss
is the MSE to the target and :meth:`PhyDiff.sample` is one forward pass (see :class:`~.config.PhyDiffConfig`).

Two training stages: ``trainable_parameters("backbone")`` trains conditioning + backbone (the adapter is
not used); ``trainable_parameters("adapter")`` freezes them and trains only the adapter.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Literal, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .adapter import XtractAdapter
from .conditioning import ConditionEmbedding
from .config import PhyDiffConfig, preset
from .context import context_inputs
from .device import autocast
from .hdit import HDiT
from .sampling import SamplerConfig, make_generator
from .sampling import sample as run_sampler
from .schedule import PhysicsSchedule
from .shifts import GridShift, token_shifts

log = logging.getLogger(__name__)


@dataclass
class DiffusionBatch:
    """One training batch. ``target`` and ``b0`` (B, 1, H, W) in [-1, 1]; ``bval`` (B,) s/mm^2;
    ``bvec`` (B, 3); ``slice_pos`` (B,) in [0, 1]; ``adc`` (B, 1, H, W) mm^2/s for ``bval``;
    ``tracts`` optional (B, C, H, W); ``context`` (B, C, H, W) for a model with a context, else None."""

    target: Tensor
    b0: Tensor
    bval: Tensor
    bvec: Tensor
    slice_pos: Tensor
    adc: Tensor
    tracts: Tensor | None = None
    context: Tensor | None = None

    def __post_init__(self) -> None:
        b = self.target.shape[0]
        image = (b, 1) + tuple(self.target.shape[2:])
        if self.target.ndim != 4 or self.target.shape[1] != 1:
            raise ValueError(f"target must be (B, 1, H, W), got {tuple(self.target.shape)}")
        for name in ("b0", "adc"):
            if tuple(getattr(self, name).shape) != image:
                raise ValueError(f"{name} must be {image}, got {tuple(getattr(self, name).shape)}")
        if tuple(self.bval.shape) != (b,) or tuple(self.bvec.shape) != (b, 3) or tuple(self.slice_pos.shape) != (b,):
            raise ValueError(
                f"need bval (B,), bvec (B, 3), slice_pos (B,) with B={b}; got {tuple(self.bval.shape)}, "
                f"{tuple(self.bvec.shape)}, {tuple(self.slice_pos.shape)}"
            )
        if self.tracts is not None and (
            self.tracts.ndim != 4 or self.tracts.shape[0] != b or self.tracts.shape[2:] != self.target.shape[2:]
        ):
            raise ValueError(f"tracts must be (B, C, H, W) on the image grid, got {tuple(self.tracts.shape)}")
        if self.context is not None and (
            self.context.ndim != 4 or self.context.shape[0] != b or self.context.shape[2:] != self.target.shape[2:]
        ):
            raise ValueError(f"context must be (B, C, H, W) on the image grid, got {tuple(self.context.shape)}")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> DiffusionBatch:
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in ("tracts", "context") and n not in data]
        if missing:
            raise ValueError(f"batch is missing {missing}")
        return cls(**{n: data[n] for n in names if n in data})

    def to(self, device: torch.device | str) -> DiffusionBatch:
        moved = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return DiffusionBatch(**{k: None if v is None else v.to(device) for k, v in moved.items()})


class PhyDiff(nn.Module):
    """The whole model. ``forward`` is the network (its output per ``config.objective``); ``loss`` is the
    training objective; ``sample`` synthesises DWI slices."""

    def __init__(self, config: PhyDiffConfig) -> None:
        super().__init__()
        self.config = config
        self.conditioning = ConditionEmbedding(config.conditioning)
        self.backbone = HDiT(config.backbone, config.conditioning.width)
        self.adapter = (
            None
            if config.adapter is None
            else XtractAdapter(config.adapter, config.backbone.widths, config.backbone.patch_size)
        )
        self.schedule = PhysicsSchedule(config.schedule)
        # passes averaged per step when a sampler leaves ``shifts`` None (:mod:`.shifts`): the training's
        # choice on its validation subjects (a bundle's ``sampler_shifts``, set by load_bundle); 1 when new
        self.shifts = 1

    @classmethod
    def from_preset(cls, name: str) -> PhyDiff:
        return cls(preset(name))

    # ----------------------------------------------------------------------------------------- forward

    def adapter_features(self, tracts: Tensor, b0: Tensor) -> list[Tensor]:
        if self.adapter is None:
            raise ValueError("this model has no XTRACT adapter (config.adapter is None)")
        return self.adapter(tracts, b0)

    def _use_adapter(self, tracts: Tensor | None, use_adapter: bool | None) -> bool:
        if use_adapter is None:
            return self.adapter is not None and tracts is not None
        if use_adapter and (self.adapter is None or tracts is None):
            raise ValueError("use_adapter=True needs a model with an adapter and a tract condition")
        return use_adapter

    def forward(
        self,
        x_t: Tensor,
        t: Tensor,
        b0: Tensor,
        bval: Tensor,
        bvec: Tensor,
        slice_pos: Tensor,
        tracts: Tensor | None = None,
        adapter_features: list[Tensor] | None = None,
        use_adapter: bool | None = None,
        context: Tensor | None = None,
    ) -> Tensor:
        """The network's prediction (B, 1, H, W) for x_t (B, 1, H, W) at steps t (B,): the clean slice for x0
        and regression, the noise for eps, v for v (:meth:`predict_eps` turns any diffusion output into noise).

        The adapter runs when ``use_adapter`` is True, or when it is None and the model has an adapter
        and ``tracts`` is given; precomputed ``adapter_features`` skip the adapter's forward.
        ``context`` (B, C, H, W): the context maps, required exactly when ``config.context`` is not none.
        """
        cond = self.conditioning(t, bval, bvec, slice_pos)
        if adapter_features is None and self._use_adapter(tracts, use_adapter):
            adapter_features = self.adapter_features(tracts, b0)
        x = torch.cat([x_t, b0.to(x_t.dtype)] + context_inputs(self.config.context, context, bval, bvec, x_t), dim=1)
        return self.backbone(x, cond, adapter_features)

    def shifted_passes(self, count: int, b0: Tensor, tracts: Tensor | None, context: Tensor | None,
                       use_adapter: bool) -> list[tuple[GridShift, Tensor, list[Tensor] | None, Tensor | None]]:
        """For each of ``count`` passes (:func:`~.shifts.token_shifts`): the move, and the b0, the adapter
        features (when ``use_adapter``) and the context maps on the moved grid; see :meth:`averaged`."""
        passes = []
        for shift in token_shifts(count, self.config.backbone.patch_size):
            move = GridShift(shift, self.config.backbone.size_multiple)
            b0_s, tracts_s, context_s = (move(a) for a in (b0, tracts, context))
            passes.append((move, b0_s, self.adapter_features(tracts_s, b0_s) if use_adapter else None, context_s))
        return passes

    def averaged(self, passes, x_t: Tensor, t: Tensor, bval: Tensor, bvec: Tensor, slice_pos: Tensor,
                 amp=contextlib.nullcontext) -> Tensor:
        """The mean (float32, (B, 1, H, W)) of the network's output over ``passes`` (:meth:`shifted_passes`),
        each on x_t moved with its pass and cropped back; ``amp``: a context-manager factory (autocast)."""
        outs = []
        for move, b0_s, features, context_s in passes:
            with amp():
                out = self(move(x_t), t, b0_s, bval, bvec, slice_pos, adapter_features=features, use_adapter=False,
                           context=context_s)
            outs.append(move.back(out.float()))
        return outs[0] if len(outs) == 1 else torch.stack(outs).mean(0)

    def loss(
        self,
        batch: DiffusionBatch | Mapping[str, Any],
        *,
        t: Tensor | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        use_adapter: bool | None = None,
        shifts: int = 1,
    ) -> Tensor:
        """The objective's MSE (of x0, the noise or v; scalar, float32) at uniform random steps (or ``t``) and
        Gaussian ``noise``; with ``shifts`` > 1, of the network's output averaged over that many shifted
        passes (:meth:`averaged`, what sampling with those passes uses).

        For the regression objective: the MSE of the one-pass prediction to the target (``t``, ``noise`` and
        ``generator`` are ignored: the objective is deterministic).
        """
        if not isinstance(batch, DiffusionBatch):
            batch = DiffusionBatch.from_mapping(batch)
        x0 = batch.target.float()
        b = x0.shape[0]
        passes = None
        if shifts != 1:
            passes = self.shifted_passes(shifts, batch.b0, batch.tracts, batch.context,
                                         self._use_adapter(batch.tracts, use_adapter))
        cond = (batch.bval, batch.bvec, batch.slice_pos)
        if self.is_regression:
            if passes is not None:
                return F.mse_loss(self.averaged(passes, *regression_input(batch.b0), *cond), x0)
            pred = self.regress(batch.b0, *cond, batch.tracts, use_adapter, context=batch.context)
            return F.mse_loss(pred.float(), x0)
        if t is None:
            t = torch.randint(0, self.schedule.num_steps, (b,), generator=generator, device=x0.device)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        g = self.schedule.excess_beta(batch.adc, batch.bval)
        x_t = self.schedule.q_sample(x0, t, noise, g)
        if passes is not None:
            out = self.averaged(passes, x_t, t, *cond)
        else:
            out = self(x_t, t, batch.b0, *cond, batch.tracts, use_adapter=use_adapter, context=batch.context)
        if self.config.x0_skip:
            return F.mse_loss(self.schedule.x0_from_v(x_t.float(), t, g, out.float()), x0)
        target = self.schedule.loss_target(self.config.objective, x0, noise.float(), t, g)
        return F.mse_loss(out.float(), target)

    def predict_eps(self, x_t: Tensor, t: Tensor, g: Tensor | None, out: Tensor) -> Tensor:
        """The noise implied by the network's output ``out`` for x_t (all (B, 1, H, W), float32), through the
        per-pixel schedule (:meth:`~.schedule.PhysicsSchedule.predict_eps`): ``out`` itself for the eps
        objective, (x_t - sqrt(abar) x0) / sqrt(1 - abar) for x0, sqrt(1 - abar) x_t + sqrt(abar) v for v."""
        objective = "v" if self.config.x0_skip else self.config.objective
        return self.schedule.predict_eps(objective, x_t, t, g, out)

    # -------------------------------------------------------------------------------------- regression

    @property
    def is_regression(self) -> bool:
        """True for the deterministic regression baseline (``config.objective == "regression"``)."""
        return self.config.objective == "regression"

    def regress(
        self,
        b0: Tensor,
        bval: Tensor,
        bvec: Tensor,
        slice_pos: Tensor,
        tracts: Tensor | None = None,
        use_adapter: bool | None = None,
        adapter_features: list[Tensor] | None = None,
        context: Tensor | None = None,
    ) -> Tensor:
        """The regression objective's prediction (B, 1, H, W) of the target slice in [-1, 1] space: one
        forward pass with x_t = 0 at t = 0."""
        x, t = regression_input(b0)
        return self(x, t, b0, bval, bvec, slice_pos, tracts, adapter_features=adapter_features, use_adapter=use_adapter,
                    context=context)

    # ---------------------------------------------------------------------------------------- sampling

    @torch.no_grad()
    def sample(
        self,
        b0: Tensor,
        bval: Tensor,
        bvec: Tensor,
        slice_pos: Tensor,
        adc: Tensor | None,
        tracts: Tensor | None = None,
        sampler: SamplerConfig = SamplerConfig(),
        seed: int | None = None,
        generator: torch.Generator | None = None,
        precision: Literal["fp32", "bf16"] = "fp32",
        context: Tensor | None = None,
    ) -> Tensor:
        """Synthesise (B, 1, H, W) in the [-1, 1] intensity space of ``b0`` (B, 1, H, W).

        ``adc``: ADC-atlas slice for each target b-value (B, 1, H, W), None = no physics term.
        ``seed`` (or a ``generator`` on b0's device) makes the result reproducible on that device.
        ``context`` (B, C, H, W): the context maps of a model with a context (see :meth:`forward`).
        Every network evaluation averages ``sampler.shifts`` passes (None: :attr:`shifts`), each on the inputs
        moved in-plane against the token grid (:mod:`.shifts`) and cropped back.
        Runs in eval mode (restored afterwards). The regression objective ignores ``sampler`` (but its
        ``shifts``), ``seed`` and ``generator`` and returns its one-pass prediction.
        """
        if generator is None and seed is not None:
            generator = make_generator(seed, b0.device)
        was_training = self.training
        self.eval()
        try:
            passes = self.shifted_passes(sampler.shifts or self.shifts, b0, tracts, context,
                                         self._use_adapter(tracts, None))
            amp = (lambda: autocast(b0.device, precision)) if precision != "fp32" else contextlib.nullcontext

            def network(x: Tensor, t: Tensor) -> Tensor:
                return self.averaged(passes, x, t, bval, bvec, slice_pos, amp)

            if self.is_regression:
                return network(*regression_input(b0))
            g = self.schedule.excess_beta(adc, bval) if self.schedule.gap > 0 else None

            def eps_fn(x: Tensor, t: Tensor) -> Tensor:
                return self.predict_eps(x, t, g, network(x, t))

            return run_sampler(eps_fn, self.schedule, g, tuple(b0.shape), sampler, b0, generator, b0.device)
        finally:
            self.train(was_training)

    # -------------------------------------------------------------------------------------- parameters

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Conditioning and HDiT parameters (what the first training stage optimises)."""
        return list(self.conditioning.parameters()) + list(self.backbone.parameters())

    def trainable_parameters(self, stage: Literal["backbone", "adapter"]) -> list[nn.Parameter]:
        """Set ``requires_grad`` for a training stage and return the parameters to optimise."""
        if stage not in ("backbone", "adapter"):
            raise ValueError(f"stage must be 'backbone' or 'adapter', got {stage!r}")
        if stage == "adapter" and self.adapter is None:
            raise ValueError("this model has no XTRACT adapter to train")
        train_backbone = stage == "backbone"
        for p in self.backbone_parameters():
            p.requires_grad_(train_backbone)
        if self.adapter is not None:
            for p in self.adapter.parameters():
                p.requires_grad_(not train_backbone)
        return self.backbone_parameters() if train_backbone else list(self.adapter.parameters())

    def parameter_count(self, part: Literal["backbone", "adapter", "all"] = "all") -> int:
        if part == "backbone":
            params = self.backbone_parameters()
        elif part == "adapter":
            params = [] if self.adapter is None else list(self.adapter.parameters())
        elif part == "all":
            params = list(self.parameters())
        else:
            raise ValueError(f"part must be 'backbone', 'adapter' or 'all', got {part!r}")
        return sum(p.numel() for p in params)


def regression_input(b0: Tensor) -> tuple[Tensor, Tensor]:
    """The regression objective's fixed network input for ``b0`` (B, 1, H, W): x_t = 0 (float32) and t = 0."""
    return (torch.zeros(b0.shape, dtype=torch.float32, device=b0.device),
            torch.zeros(b0.shape[0], dtype=torch.long, device=b0.device))
