"""The run's configuration: one frozen object per run, built by the command line, read by every level.

:class:`RunConfig` holds what the user chose (paths absolute, defaults resolved); :class:`TrainOptions`
and :class:`SynthOptions` the options of the group level and of synthesis. The object is saved as JSON
to ``<work_dir>/config.json`` and to ``<output_dir>/logs/config-<run_id>.json`` so that a run can be
inspected and repeated. The sampler defaults below are the only place they are written down: the
command line's help, :class:`SynthOptions` and ``synth.inputs.app_sampler`` all read them.

No numpy or torch here: the command line imports this before it knows whether it will need them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from . import __version__
from .atomic import atomic_path
from .spaces import DEFAULT_TEMPLATE

DEFAULT_RESOLUTION = 2.0
"""Isotropic voxel size of the template-space outputs, mm."""

SAMPLER_METHOD = "ddim"
"""The reverse sampler: ``ddim`` (``SAMPLER_STEPS`` steps) or ``ddpm`` (every step from the start)."""
SAMPLER_STEPS = 50
"""DDIM steps."""
SAMPLER_ETA = 1.0
"""DDIM noise (0 deterministic, 1 as much as DDPM). Measured on a phantom bundle of the tiny preset (1000
steps), 4 slices x b = 1000..3000, RMSE to the target in normalised units: DDIM 50 with eta 0 0.31 (its
intensities drift up), eta 1 0.08, ancestral DDPM over 800 steps 0.08 in 15x the time; DDIM 20 with eta 1
0.12."""
SAMPLER_STRENGTH = 0.8
"""SDEdit: sampling starts from the b0 noised to this fraction of the schedule; 1.0 = pure noise."""


@dataclass(frozen=True)
class TrainOptions:
    """Group level: what to train and where the bundle goes (``output_dir/models/model-<label>``)."""

    train_config: str = "paper"
    """a preset name (train.config) or the path of a YAML/JSON file"""
    max_steps: int | None = None
    """steps of the backbone stage (the adapter stage has its own count in the training config)"""
    batch_size: int | None = None
    context: str | None = None
    """none/dti/sh4: overrides the training config's model.context (None: keep it)"""
    context_shells: tuple[float, ...] | None = None
    """s/mm^2: overrides the training config's context_shells (None: keep them)"""
    val_subjects: tuple[str, ...] | None = None
    """None: chosen from the seed (20% of subjects when there are at least 3)"""
    model_label: str = "default"
    resume: bool = False
    xtract_atlas: Path | None = None
    """None: look under $FSLDIR"""
    use_xtract: bool = True


@dataclass(frozen=True)
class SynthOptions:
    """Participant level with ``--model``: which gradients to synthesise and how to sample."""

    target_scheme: tuple[str, ...] = ("acquired",)
    """("acquired",) or (bval path, bvec path)"""
    target_shells: tuple[float, ...] = ()
    """s/mm^2; when set, overrides target_scheme"""
    target_directions: int = 30
    sampler: str = SAMPLER_METHOD
    steps: int = SAMPLER_STEPS
    eta: float = SAMPLER_ETA
    strength: float = SAMPLER_STRENGTH
    shifts: int | None = None
    """network passes averaged per step on inputs moved against the token grid; None = the bundle's choice"""
    samples: int = 1
    batch_size: int | None = None
    """items per model call; None = automatic (:mod:`bids_phydiff.synth.batching`)"""
    output_space: str = "template"


def _plain(value):
    """JSON-ready copy: paths as strings, tuples as lists, dataclasses as dicts."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if hasattr(value, "__dataclass_fields__"):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    return value


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs to know; paths are absolute."""

    bids_dir: Path
    output_dir: Path
    analysis_level: str
    work_dir: Path
    participant_label: tuple[str, ...] = ()
    session_label: tuple[str, ...] = ()
    bids_filters: dict = field(default_factory=dict)
    skip_bids_validation: bool = False
    bids_database_dir: Path | None = None
    b0_threshold: float = 50.0
    hmc: str = "rigid"
    """head-motion correction: rigid (one rigid registration per volume) or none"""
    fd_threshold: float = 1.0
    """mm; volumes above this framewise displacement are listed (not dropped). 1 mm: half a 2 mm DWI voxel;
    fMRIPrep's 0.5 mm is for BOLD volumes 1-2 s apart, DWI volumes are 3-10 s apart"""
    input_type: str = "raw"
    """raw BIDS, or preprocessed (QSIPrep-style desc-preproc derivatives: no denoising, no motion correction,
    the given brain mask); the command line resolves ``--input-type auto`` to one of them"""
    denoise: str = "none"
    """denoising of raw DWI before anything else: none, mppca or patch2self (dipy)"""
    nprocs: int = 1
    omp_nthreads: int = 1
    mem_gb: float | None = None
    use_plugin: Path | None = None
    plugin: dict = field(default_factory=dict)
    stop_on_first_crash: bool = False
    seed: int = 0
    device: str = "auto"
    template: str = DEFAULT_TEMPLATE
    output_resolution: float = DEFAULT_RESOLUTION
    model: Path | None = None
    train: TrainOptions = field(default_factory=TrainOptions)
    synth: SynthOptions = field(default_factory=SynthOptions)
    verbose: int = 0
    version: str = __version__
    run_id: str = ""

    @property
    def run_dir(self) -> Path:
        """This run's own folder of the work dir (removed when the run ends)."""
        return self.work_dir / f"run-{self.run_id}"

    @property
    def database_dir(self) -> Path:
        """Where the pybids index lives (never inside bids_dir): the shared ``--bids-database-dir``, else
        :attr:`run_dir`, so that runs sharing a work dir never share an index."""
        return self.bids_database_dir or self.run_dir / "bids_db"

    def to_dict(self) -> dict:
        return _plain(self)

    def save(self) -> list[Path]:
        """Write the config to the work dir and to output_dir/logs; return the two paths."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        targets = [self.work_dir / "config.json", self.output_dir / "logs" / f"config-{self.run_id}.json"]
        for target in targets:
            with atomic_path(target) as tmp:
                tmp.write_text(text)
        return targets
