"""Train a model bundle from prepared runs: the one function the group level calls.

:func:`train_bundle` computes the ADC atlas per b-shell from the training runs (paper Eq. 4), builds the
slice datasets, trains stage 1 (backbone) and, with a tract atlas, stage 2 (XTRACT adapter), and writes
the bundle folder (DESIGN.md section 4)::

    config.json, weights.safetensors   the EMA weights (model/bundle.py)
    adc_atlas.nii.gz                   (X, Y, Z, S) mm^2/s, one volume per shell of config.json b_shells
    train.json                         subjects, data hash, code version, seed, config, metrics
    training.tsv                       step, stage, lr, train_loss, val_loss
    training_loss.png                  the loss curves

The bundle is assembled in a temporary sibling folder and renamed into place. Under ``torchrun`` every
rank trains its shard; only rank 0 writes caches, checkpoints and the bundle.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .. import __version__
from ..atomic import replace_dir, staging_dir
from ..bids.prepared import PreparedRun
from ..errors import InputDataError, NoInputError, OutputError
from ..model.bundle import (
    ADC_ATLAS_FILE,
    CURVE_FILE,
    HISTORY_FILE,
    SHIFTS_KEY,
    TRACT_ATLAS_FILE,
    TRAIN_JSON,
    GridSpec,
    save_bundle,
)
from ..model.config import PhyDiffConfig
from ..model.device import resolve_device
from ..model.phydiff import PhyDiff
from ..prep.adc import adc_atlas_from_files
from ..prep.gradients import B0_THRESHOLD
from . import distributed as ddp
from .checkpoint import checkpoint_dir
from .config import TrainConfig
from .dataset import SliceDataset, SliceGrid
from .history import plot_loss_curves, write_history_tsv
from .loop import LoopResult, Trainer
from .normalise import PERCENTILE

LOGGER = logging.getLogger(__name__)



@dataclass
class TrainResult:
    """``bundle``: the written bundle folder (None on ranks other than 0); ``metrics`` as in train.json."""

    bundle: Path | None
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    shells: tuple[float, ...]
    loop: LoopResult


def normalisation_record() -> dict[str, Any]:
    """What ``config.json`` says about intensities (DESIGN.md section 4, :mod:`.normalise`)."""
    return {
        "method": "b0_percentile",
        "percentile": PERCENTILE,
        "output_range": [-1.0, 1.0],
        "formula": "x_norm = 2 * x / scale - 1, scale = percentile of the b0 reference inside the brain mask",
        "b0_threshold": B0_THRESHOLD,
    }


def data_sha256(runs: list[PreparedRun]) -> str:
    """SHA-256 over the names and contents of every file of ``runs`` (in subject, path order)."""
    digest = hashlib.sha256()
    for run in sorted(runs, key=lambda r: (r.subject, str(r.dwi))):
        for path in run.arrays:
            digest.update(f"{run.subject}:{Path(path).name}:".encode())
            with open(path, "rb") as handle:
                while block := handle.read(1 << 20):
                    digest.update(block)
    return digest.hexdigest()


def model_config_for(config: TrainConfig, tract_channels: int | None) -> PhyDiffConfig:
    """The architecture to train: without tracts no adapter; with ``K`` tract channels an adapter of K inputs.

    A model config without an adapter (``adapter: null``, the w/o-XTRACT ablation) ignores a tract atlas.
    """
    model = config.model_config()
    if tract_channels is None:
        return model.replace(adapter=None)
    if model.adapter is None:
        LOGGER.info("the model config has no adapter (adapter: null): the tract atlas is not used")
        return model
    if model.adapter.in_channels != tract_channels:
        LOGGER.info("adapter input channels %d -> %d (the tract atlas)", model.adapter.in_channels, tract_channels)
        model = model.replace(adapter=dataclasses.replace(model.adapter, in_channels=tract_channels))
    return model


def _check_runs(runs: list[PreparedRun], what: str) -> None:
    for run in runs:
        for path in run.arrays:
            if not Path(path).is_file():
                raise NoInputError(f"{path}: {what} file of sub-{run.subject} not found")


def train_bundle(
    train_runs: list[PreparedRun],
    val_runs: list[PreparedRun],
    grid_spec: GridSpec,
    out_dir: Path,
    work_dir: Path,
    config: TrainConfig,
    device: str = "auto",
    tract_atlas: np.ndarray | None = None,
    resume: bool = False,
    metadata: dict[str, Any] | None = None,
    *,
    overwrite: bool = False,
    progress: bool | None = None,
) -> TrainResult:
    """Train on ``train_runs``, validate on ``val_runs`` and write the bundle folder ``out_dir``.

    ``grid_spec``: the template grid every run is on (shape (X, Y, Z), affine); ``tract_atlas``:
    ``(X, Y, Z, K)`` tract probabilities on that grid (enables stage 2), or None. ``work_dir``: caches
    (``cache/``) and checkpoints (``checkpoints/``); ``resume`` continues from its newest checkpoint.
    ``device``: ``auto``/``cpu``/``cuda``; under torchrun each rank uses ``cuda:LOCAL_RANK``.
    ``metadata``: extra JSON stored in config.json and train.json. An existing ``out_dir`` is an
    :class:`OutputError` unless ``overwrite``.
    """
    out_dir, work_dir = Path(out_dir), Path(work_dir)
    if not train_runs:
        raise NoInputError("no prepared runs to train on")
    _check_runs(train_runs, "training")
    _check_runs(val_runs, "validation")
    if out_dir.exists() and not overwrite:
        raise OutputError(f"{out_dir}: a model bundle already exists there (choose another label or remove it)")
    if tract_atlas is not None:
        tract_atlas = np.asarray(tract_atlas, dtype=np.float32)
        if tract_atlas.ndim != 4 or tuple(tract_atlas.shape[:3]) != grid_spec.shape:
            raise InputDataError(
                f"tract atlas of shape {tract_atlas.shape} is not (X, Y, Z, K) on the model grid {grid_spec.shape}"
            )
    base_device = resolve_device(device)
    joined = not (dist.is_available() and dist.is_initialized())
    world = ddp.init(base_device)
    joined = joined and world.distributed
    dev = ddp.rank_device(base_device, world)
    try:
        return _train(train_runs, val_runs, grid_spec, out_dir, work_dir, config, dev, world, tract_atlas, resume,
                      dict(metadata or {}), overwrite, progress)
    finally:
        if joined:
            ddp.shutdown()


def _train(train_runs, val_runs, grid_spec: GridSpec, out_dir: Path, work_dir: Path, config: TrainConfig,
           device: torch.device, world: ddp.World, tracts, resume: bool, metadata: dict, overwrite: bool,
           progress) -> TrainResult:
    atlas, shells, _ = adc_atlas_from_files([(r.dwi, r.bval, r.mask) for r in train_runs])
    if tuple(atlas.shape[:3]) != grid_spec.shape:
        raise InputDataError(f"{train_runs[0].dwi}: grid {atlas.shape[:3]} is not the model grid {grid_spec.shape}")
    if shells.size == 0:
        raise InputDataError(f"{train_runs[0].bval}: the training runs have no diffusion-weighted volumes")
    model_config = model_config_for(config, None if tracts is None else int(tracts.shape[3]))
    if model_config.adapter is None:
        tracts = None
    grid = SliceGrid.for_multiple(grid_spec.shape, model_config.backbone.size_multiple)
    cache = work_dir / "cache"
    if world.is_main:
        work_dir.mkdir(parents=True, exist_ok=True)
    datasets = None
    for turn in ("main", "others"):  # rank 0 writes the caches, the others then read them
        if (turn == "main") == world.is_main:
            datasets = (
                SliceDataset(train_runs, grid, cache, atlas, shells, tracts, context=model_config.context,
                             context_shells=config.context_shells),
                SliceDataset(val_runs, grid, cache, atlas, shells, tracts, context=model_config.context,
                             context_shells=config.context_shells)
                if val_runs else None,
            )
        ddp.barrier(world)
    train_set, val_set = datasets
    if val_set is None and world.is_main:
        LOGGER.warning("no validation runs: training without a validation loss")
    torch.manual_seed(config.seed)
    model = PhyDiff(model_config)
    trainer = Trainer(model, config, train_set, val_set, device, world, checkpoint_dir(work_dir),
                      train_adapter=tracts is not None and config.adapter_steps > 0, progress=progress)
    loop = trainer.run(resume=resume)
    metrics = _metrics(loop, train_set, val_set)
    shifts, shift_losses = trainer.choose_shifts(loop.stage)
    metrics["shifted_passes"] = {"chosen": shifts,
                                 "val_loss": {n: v if math.isfinite(v) else None for n, v in shift_losses.items()}}
    bundle = None
    if world.is_main:
        info = {
            "code_version": __version__,
            "seed": config.seed,
            "subjects": {"train": sorted({r.subject for r in train_runs}),
                         "validation": sorted({r.subject for r in val_runs})},
            "runs": {"train": [str(r.dwi) for r in train_runs], "validation": [str(r.dwi) for r in val_runs]},
            "data_sha256": data_sha256(train_runs),
            "config": config.to_dict(),
            "device": str(device),
            "world_size": world.world_size,
            "b_shells": [float(b) for b in shells],
            "metrics": metrics,
            "metadata": metadata,
        }
        bundle_meta = {
            **metadata,
            "slice_grid": {"shape": list(grid.shape), "padded": list(grid.padded)},
            "adc_atlas": ADC_ATLAS_FILE,
            "tract_channels": None if tracts is None else int(tracts.shape[3]),
            "tract_atlas": None if tracts is None else TRACT_ATLAS_FILE,
            SHIFTS_KEY: shifts,
        }
        if model_config.context != "none":
            bundle_meta["context"] = _context_record(model_config.context, train_set)
        bundle = write_bundle(out_dir, loop, grid_spec, shells, atlas, info, bundle_meta, overwrite, tracts)
    ddp.barrier(world)
    return TrainResult(bundle, metrics, loop.history, tuple(float(b) for b in shells), loop)


def _context_record(kind: str, train_set: SliceDataset) -> dict[str, Any]:
    """What synthesis needs to build the model's context: the kind and the acquired shells (s/mm^2) it was
    trained to take it from."""
    shells = sorted({float(b) for run in train_set.contexts for b, _ in run})
    return {"kind": kind, "shells": shells}


def _metrics(loop: LoopResult, train_set, val_set) -> dict[str, Any]:
    train_losses = [r["train_loss"] for r in loop.history if math.isfinite(r["train_loss"])]
    tail = train_losses[-max(1, len(train_losses) // 10):] if train_losses else []
    vals = [r["val_loss"] for r in loop.history if math.isfinite(r["val_loss"])]
    stages = {}
    for stage in ("backbone", "adapter"):
        steps = [r for r in loop.history if r["stage"] == stage and r["step"] > 0]
        if steps:
            stages[stage] = len(steps)

    def clean(x):
        return None if x is None or not math.isfinite(x) else float(x)

    return {
        "steps": loop.step,
        "steps_per_stage": stages,
        "train_samples": len(train_set),
        "validation_samples": 0 if val_set is None else len(val_set),
        "initial_val_loss": clean(vals[0]) if vals else None,
        "final_val_loss": clean(vals[-1]) if vals else None,
        "final_val_loss_per_stage": {k: clean(v) for k, v in loop.final_val_loss.items()},
        "final_train_loss": clean(float(np.mean(tail))) if tail else None,
        "seconds": loop.seconds,
        "samples_per_second": clean(loop.samples_per_second),
    }


def _save_volume(data: np.ndarray, grid_spec: GridSpec, path: Path, description: bytes) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), np.asarray(grid_spec.affine, dtype=np.float64))
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = description
    img.to_filename(str(path))


def write_bundle(out_dir: Path, loop: LoopResult, grid_spec: GridSpec, shells: np.ndarray, atlas: np.ndarray,
                 info: dict[str, Any], bundle_meta: dict[str, Any], overwrite: bool = False,
                 tracts: np.ndarray | None = None) -> Path:
    """Write every file of the bundle into a temporary sibling folder, then rename it to ``out_dir``.

    ``tracts`` ``(X, Y, Z, K)``: the tract atlas on the model grid the adapter was trained with, stored as
    ``tract_atlas.nii.gz`` so that synthesis conditions on exactly the same channels.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_dir(out_dir.parent, prefix=f".{out_dir.name}.", suffix=".partial")
    try:
        folder = save_bundle(staging / out_dir.name, loop.ema, grid=grid_spec, b_shells=[float(b) for b in shells],
                             normalisation=normalisation_record(), metadata=bundle_meta)
        _save_volume(atlas, grid_spec, folder / ADC_ATLAS_FILE, b"ADC atlas mm^2/s per b-shell")
        if tracts is not None:
            _save_volume(tracts, grid_spec, folder / TRACT_ATLAS_FILE, b"tract probabilities on the model grid")
        with open(folder / TRAIN_JSON, "w", encoding="utf-8") as handle:
            json.dump(info, handle, indent=2, allow_nan=False)
            handle.write("\n")
        write_history_tsv(loop.history, folder / HISTORY_FILE)
        plot_loss_curves(loop.history, folder / CURVE_FILE, objective=loop.ema.config.objective)
        if out_dir.exists() and not overwrite:
            raise OutputError(f"{out_dir}: a model bundle appeared there during training; not replacing it")
        replace_dir(folder, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    LOGGER.info("wrote model bundle %s", out_dir)
    return out_dir
