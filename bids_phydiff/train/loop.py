"""The training loop: two stages, AdamW (:mod:`.optimizer`), warm-up + cosine learning rate, EMA, validation,
checkpoints.

Stage 1 (``backbone``, steps ``0 .. max_steps - 1``) trains the conditioning and the HDiT backbone with
the model's loss (:meth:`PhyDiff.loss`, per its objective: x0, noise, v or regression) under the
physics-guided forward process. Stage 2 (``adapter``, the next ``adapter_steps``
steps, only when ``train_adapter``) first loads the averaged (EMA) weights into the live model, freezes
everything but the XTRACT adapter (``requires_grad=False``; the optimiser sees only adapter parameters)
and trains the adapter on the tract condition. Step numbers run on over both stages.

Determinism: the samples of step ``s`` and each sample's timestep and noise are functions of
(seed, s, position in the global batch) (:mod:`.batches`), the learning rate a function of ``s``
(:mod:`.lr`), so a run resumed from a checkpoint repeats exactly what an uninterrupted run does, and K
data-parallel processes (:mod:`.distributed`) compute the same update as one process with the same
global batch. Validation uses the EMA weights on fixed held-out samples with fixed timesteps and noise.

History: one row per step, ``{"step": steps done (1-based), "stage", "lr", "train_loss", "val_loss"}``
(losses are the model's MSE on the normalised images, dimensionless; NaN where not measured), plus a
row ``step 0`` holding the validation loss of the initial weights.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UsageError
from ..model.device import autocast
from ..model.phydiff import DiffusionBatch, PhyDiff
from . import augment
from . import distributed as ddp
from .batches import StepBatchSampler, global_batch, sample_noise, shard, validation_indices, validation_noise
from .checkpoint import Checkpoint, clear_checkpoints, latest_checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .ema import EMA
from .lr import learning_rate
from .optimizer import build_optimizer

LOGGER = logging.getLogger(__name__)

STAGES = ("backbone", "adapter")
HISTORY_COLUMNS = ("step", "stage", "lr", "train_loss", "val_loss")


class _LossModule(nn.Module):
    """Wraps :meth:`PhyDiff.loss` as ``forward`` so DistributedDataParallel can hook it."""

    def __init__(self, model: PhyDiff) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: DiffusionBatch, t: torch.Tensor, noise: torch.Tensor, use_adapter: bool) -> torch.Tensor:
        return self.model.loss(batch, t=t, noise=noise, use_adapter=use_adapter)


@dataclass
class LoopResult:
    """What :meth:`Trainer.run` leaves: the live and averaged models, the history, where it stopped."""

    model: PhyDiff
    ema: PhyDiff
    history: list[dict[str, Any]]
    step: int
    stage: str
    seconds: float
    samples_per_second: float
    final_val_loss: dict[str, float] = field(default_factory=dict)


def to_batch(samples: dict[str, torch.Tensor], device: torch.device, with_tracts: bool) -> DiffusionBatch:
    """A collated :class:`~.dataset.SliceDataset` batch as a :class:`DiffusionBatch` on ``device``."""
    tracts = samples.get("tracts") if with_tracts else None
    if with_tracts and tracts is None:
        raise ValueError("the adapter stage needs samples with a tract condition")
    return DiffusionBatch(
        target=samples["target"].to(device),
        b0=samples["b0"].to(device),
        bval=samples["bval"].to(device),
        bvec=samples["bvec"].to(device),
        slice_pos=samples["slice_pos"].to(device),
        adc=samples["adc"].to(device),
        tracts=None if tracts is None else tracts.to(device),
        context=samples["context"].to(device) if "context" in samples else None,
    )


def _collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}


class Trainer:
    """Trains ``model`` (a :class:`PhyDiff` built from ``config.model_config()``) in place.

    ``train_set`` / ``val_set``: datasets of :class:`~.dataset.SliceDataset` samples (``val_set`` None or
    empty: no validation). ``checkpoint_folder``: where checkpoints go (None: none written; only rank 0
    writes). ``train_adapter``: run stage 2 (the samples must carry ``tracts``). ``device``: this rank's
    device. ``progress``: tqdm bar (default: on rank 0 when stderr is a terminal).
    """

    def __init__(self, model: PhyDiff, config: TrainConfig, train_set, val_set, device: torch.device,
                 world: ddp.World = ddp.SINGLE, checkpoint_folder: Path | None = None, train_adapter: bool = False,
                 progress: bool | None = None) -> None:
        if len(train_set) == 0:
            raise UsageError("no training samples: the prepared runs have no diffusion-weighted slices in the brain")
        if config.batch_size < world.world_size:
            raise UsageError(
                f"batch_size {config.batch_size} is smaller than the {world.world_size} processes: every process "
                "needs at least one sample per step"
            )
        if train_adapter and (model.adapter is None or config.adapter_steps == 0):
            raise UsageError("the adapter stage needs a model with an adapter and adapter_steps > 0")
        self.model = model.to(device)
        self.config = config
        self.train_set = train_set
        self.val_set = val_set if val_set is not None and len(val_set) > 0 else None
        self.device = device
        self.world = world
        self.folder = None if checkpoint_folder is None else Path(checkpoint_folder)
        self.train_adapter = train_adapter
        self.progress = progress
        self.use_bf16 = config.bf16 and device.type == "cuda"
        self.ema = EMA(self.model, config.ema_decay)
        self.stage: str | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.wrapped: nn.Module | None = None
        self.history: list[dict[str, Any]] = []
        self._saved_step = -1
        self.step = 0
        sample = train_set[0]
        self.image_shape = tuple(sample["target"].shape)  # (1, H, W)

    # ------------------------------------------------------------------------------------------ steps

    @property
    def total_steps(self) -> int:
        return self.config.max_steps + (self.config.adapter_steps if self.train_adapter else 0)

    def stage_of(self, step: int) -> str:
        return "backbone" if step < self.config.max_steps else "adapter"

    def stage_bounds(self, stage: str) -> tuple[int, int]:
        """``(first step, end step)`` (end exclusive) of ``stage``."""
        if stage == "backbone":
            return 0, self.config.max_steps
        return self.config.max_steps, self.total_steps

    # -------------------------------------------------------------------------------------- stages

    def _setup_stage(self, stage: str) -> None:
        """Freeze / unfreeze for ``stage`` and build its optimiser and (DDP) wrapper."""
        params = self.model.trainable_parameters(stage)
        self.optimizer = build_optimizer(self.model, params, self.config.lr, self.config.betas, self.config.eps,
                                         self.config.weight_decay, self.device)
        self.wrapped = None  # drop a previous DDP wrapper before wrapping again
        self.wrapped = ddp.wrap(_LossModule(self.model), self.world, self.device)
        if self.config.compile:  # around DDP, so that its bucketed all-reduce overlaps the compiled backward
            self.wrapped = torch.compile(self.wrapped)
        self.stage = stage
        LOGGER.info("stage %s: %d trainable parameters", stage, sum(p.numel() for p in params))

    def _enter_adapter_stage(self) -> None:
        """Stage 1 -> 2: the averaged backbone becomes the frozen backbone the adapter is trained on."""
        self.ema.copy_to(self.model)
        self.ema.reset_counter()
        self._setup_stage("adapter")

    def _restore(self, checkpoint: Checkpoint) -> int:
        state = checkpoint.state
        if state.get("config") != self.config.to_dict():
            raise UsageError(
                f"{checkpoint.path}: this checkpoint was written with another training config; "
                "start without --resume (or use another work directory)"
            )
        if state.get("train_adapter") != self.train_adapter or state.get("train_size") != len(self.train_set):
            raise UsageError(
                f"{checkpoint.path}: this checkpoint was written for other training data "
                f"(adapter stage {state.get('train_adapter')}, {state.get('train_size')} samples; now "
                f"{self.train_adapter}, {len(self.train_set)}); start without --resume"
            )
        self.model.load_state_dict(checkpoint.module_state("model"))
        self.ema.module.load_state_dict(checkpoint.module_state("ema"))
        self.ema.updates = int(state["ema_updates"])
        self._setup_stage(state["stage"])
        try:
            self.optimizer.load_state_dict(checkpoint.optimizer_state())
        except ValueError as exc:  # parameter groups of another layout (an older version of the app)
            raise UsageError(f"{checkpoint.path}: its optimiser state does not fit this version's parameter "
                             f"groups ({exc}); start without --resume") from None
        self.history = [dict(row) for row in state.get("history", [])]
        LOGGER.info("resumed from %s at step %d (%s stage)", checkpoint.path, checkpoint.step, self.stage)
        return checkpoint.step

    def _save(self, step: int) -> None:
        if self.folder is None or not self.world.is_main or step == self._saved_step:
            return
        self._saved_step = step
        state = {
            "stage": self.stage,
            "ema_updates": self.ema.updates,
            "config": self.config.to_dict(),
            "train_adapter": self.train_adapter,
            "train_size": len(self.train_set),
            "lr": self.optimizer.param_groups[0]["lr"],
            "history": self.history,
        }
        save_checkpoint(self.folder, step, self.model, self.ema.module, self.optimizer, state)

    # ----------------------------------------------------------------------------------- validation

    @torch.no_grad()
    def validate(self, stage: str, shifts: int = 1) -> float:
        """Mean loss of the EMA model over the fixed validation samples (NaN without any); with ``shifts``,
        of its output averaged over that many shifted passes (:mod:`~bids_phydiff.model.shifts`)."""
        if self.val_set is None:
            return math.nan
        cfg = self.config
        indices = validation_indices(cfg.seed, len(self.val_set), cfg.val_samples)
        count = indices.numel()
        positions, mine = shard(indices, self.world.rank, self.world.world_size)
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        use_adapter = stage == "adapter"
        model = self.ema.module
        for lo in range(0, positions.numel(), cfg.batch_size):
            pos = positions[lo : lo + cfg.batch_size]
            samples = _collate([self.val_set[int(i)] for i in mine[lo : lo + cfg.batch_size]])
            t, noise = validation_noise(cfg.seed, pos, count, self.image_shape, model.schedule.num_steps)
            batch = to_batch(samples, self.device, use_adapter)
            with autocast(self.device, "bf16" if self.use_bf16 else "fp32"):
                loss = model.loss(batch, t=t.to(self.device), noise=noise.to(self.device), use_adapter=use_adapter,
                                  shifts=shifts)
            total += loss.double() * pos.numel()
        return float(ddp.all_reduce_sum(total, self.world).item()) / count

    def choose_shifts(self, stage: str) -> tuple[int, dict[str, float]]:
        """The shifted passes the EMA model samples with by default: 2 when their validation loss is lower
        than one pass's, else 1 (1 without validation samples); and both losses (``{"1": ..., "2": ...}``)."""
        losses = {str(n): self.validate(stage, n) for n in (1, 2)}
        better = all(math.isfinite(v) for v in losses.values()) and losses["2"] < losses["1"]
        return (2 if better else 1), losses

    # ------------------------------------------------------------------------------------------ run

    def run(self, stop_at: int | None = None, resume: bool = False) -> LoopResult:
        """Train up to step ``stop_at`` (default: the end of the last stage) and return the result.

        ``resume``: continue from the newest checkpoint in the checkpoint folder (fresh start when there
        is none); without it, old checkpoints there are removed first. A later call on the same trainer
        continues from where the previous one stopped.
        """
        stop = self.total_steps if stop_at is None else min(int(stop_at), self.total_steps)
        if self.stage is not None:  # a second call continues in memory
            start = self.step
        else:
            start = self._begin(resume)
        t0 = time.perf_counter()
        done = 0
        show = self.progress if self.progress is not None else (self.world.is_main and sys.stderr.isatty())
        from tqdm.auto import tqdm

        with tqdm(total=max(stop - start, 0), disable=not show, desc="training", unit="step") as bar:
            step = start
            while step < stop:
                stage = self.stage_of(step)
                if stage != self.stage:
                    self._enter_adapter_stage()
                first, end = self.stage_bounds(stage)
                chunk_end = min(end, stop)
                self._run_steps(step, chunk_end, first, end, bar)
                done += chunk_end - step
                step = self.step = chunk_end
        seconds = time.perf_counter() - t0
        if stop > start:
            self._save(stop)
        final = {}
        for stage in STAGES:
            rows = [r for r in self.history if r["stage"] == stage and not math.isnan(r["val_loss"])]
            if rows:
                final[stage] = rows[-1]["val_loss"]
        return LoopResult(
            model=self.model, ema=self.ema.module, history=self.history, step=stop, stage=self.stage or "backbone",
            seconds=seconds, samples_per_second=done * self.config.batch_size / seconds if seconds > 0 else math.nan,
            final_val_loss=final,
        )

    def _begin(self, resume: bool) -> int:
        """Restore the newest checkpoint (``resume``) or start at step 0; returns the first step."""
        checkpoint = None
        if resume and self.folder is not None:
            found = latest_checkpoint(self.folder)
            if found is not None:
                checkpoint = load_checkpoint(found)
            elif self.world.is_main:
                LOGGER.info("no checkpoint in %s: starting from step 0", self.folder)
        if checkpoint is not None:
            self.step = self._restore(checkpoint)
            return self.step
        if self.folder is not None and self.world.is_main:
            clear_checkpoints(self.folder)
        ddp.barrier(self.world)
        self._setup_stage("backbone")
        val0 = self.validate("backbone")
        self.history.append({"step": 0, "stage": "backbone", "lr": math.nan, "train_loss": math.nan,
                             "val_loss": val0})
        if self.world.is_main and self.val_set is not None:
            LOGGER.info("initial validation loss %.5f", val0)
        return 0

    def _run_steps(self, start: int, stop: int, stage_first: int, stage_end: int, bar) -> None:
        cfg = self.config
        stage = self.stage
        use_adapter = stage == "adapter"
        n_data = len(self.train_set)
        sampler = StepBatchSampler(cfg.seed, n_data, cfg.batch_size, start, stop, self.world.rank,
                                   self.world.world_size)
        loader = torch.utils.data.DataLoader(
            self.train_set, batch_sampler=sampler, num_workers=cfg.num_workers, collate_fn=_collate,
            pin_memory=self.device.type == "cuda", persistent_workers=False,
        )
        timesteps = self.model.schedule.num_steps
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        precision = "bf16" if self.use_bf16 else "fp32"
        for step, samples in zip(range(start, stop), loader):
            positions, _ = shard(global_batch(cfg.seed, step, n_data, cfg.batch_size), self.world.rank,
                                 self.world.world_size)
            t, noise = sample_noise(cfg.seed, step, positions, self.image_shape, timesteps)
            if not use_adapter and (cfg.augment_flip or cfg.augment_shift):
                samples = augment.apply(samples, augment.draw(cfg.seed, step, positions, cfg.augment_flip,
                                                              cfg.augment_shift))
            batch = to_batch(samples, self.device, use_adapter)
            lr = learning_rate(step - stage_first, stage_end - stage_first, cfg.lr, cfg.warmup_steps,
                               cfg.min_lr_fraction)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            weight = ddp.shard_loss_weight(positions.numel(), cfg.batch_size, self.world)
            self.optimizer.zero_grad(set_to_none=True)
            with autocast(self.device, precision):
                loss = self.wrapped(batch, t.to(self.device), noise.to(self.device), use_adapter) * weight
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            self.optimizer.step()
            self.ema.update(self.model)
            train_loss = float(ddp.all_reduce_sum(loss.detach().double(), self.world).item()) / self.world.world_size
            if not math.isfinite(train_loss):
                raise RuntimeError(f"training diverged at step {step + 1}: loss {train_loss}")
            count = step + 1
            val = math.nan
            if (cfg.val_every and count % cfg.val_every == 0) or count == stage_end:
                val = self.validate(stage)
                if self.world.is_main:
                    LOGGER.info("step %d (%s): train loss %.5f, %s, lr %.3g", count, stage, train_loss,
                                "no validation set" if self.val_set is None else f"validation loss {val:.5f}", lr)
            self.history.append({"step": count, "stage": stage, "lr": lr, "train_loss": train_loss, "val_loss": val})
            bar.update(1)
            bar.set_postfix(loss=f"{train_loss:.4f}", lr=f"{lr:.2e}", refresh=False)
            if cfg.checkpoint_every and count % cfg.checkpoint_every == 0 and count != self.total_steps:
                self._save(count)
