"""One synthesis driver: load a bundle, read a prepared run, synthesise a scheme for it.

The participant level with ``--model`` (:mod:`bids_phydiff.workflows.synthesis`) and the evaluation
command (:mod:`bids_phydiff.eval.evaluate`) both go through these three functions, so they synthesise the
same way; what each does with the result (BIDS outputs and a report, or evaluation tables) is theirs.
A prepared run is given as plain paths (:class:`bids_phydiff.bids.prepared.PreparedRun`); nothing here
knows BIDS names.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import nibabel as nib
import numpy as np

from ..errors import InputDataError, NoInputError
from ..model.sampling import SamplerConfig
from ..prep.gradients import read_fsl
from ..train.normalise import Normaliser
from .grid import check_grid, slice_grid
from .inputs import BundleConditions, bundle_conditions
from .scheme import TargetScheme
from .volume import Synthesis, synthesise

if TYPE_CHECKING:
    from ..bids.prepared import PreparedRun

log = logging.getLogger(__name__)

__all__ = ["ContextSource", "LoadedBundle", "SubjectData", "context_source", "load_bundle", "load_subject",
           "model_evaluations", "run_context", "synthesise_acquired", "synthesise_run"]


@dataclass(frozen=True)
class LoadedBundle:
    """A bundle (:class:`bids_phydiff.model.bundle.Bundle`) with its ADC and tract atlases
    (:class:`~.inputs.BundleConditions`), under the method ``name`` of the evaluation tables."""

    name: str
    bundle: object
    conditions: BundleConditions


@dataclass(frozen=True)
class SubjectData:
    """One prepared run in memory: ``b0`` (X, Y, Z) the b0 reference in signal units, ``mask`` (X, Y, Z)
    bool, ``affine`` (4, 4), ``bvals`` (N,) s/mm^2 and ``bvecs`` (N, 3) of the acquired scheme, ``scale``
    the b0 scale (99.5th percentile in the mask: the data range of the masked PSNR and SSIM), and ``dwi``
    (X, Y, Z, N) signal units, or None when it was not read."""

    run: "PreparedRun"
    b0: np.ndarray
    mask: np.ndarray
    affine: np.ndarray
    bvals: np.ndarray
    bvecs: np.ndarray
    scale: float
    dwi: np.ndarray | None = None


def load_bundle(path: str | Path, device: str = "cpu", name: str = "phydiff", what: str | None = None) -> LoadedBundle:
    """The bundle folder ``path`` on ``device`` with its conditions. A missing folder is a
    :class:`NoInputError` (66), a corrupt or inconsistent one an :class:`InputDataError` (65); each message
    starts with ``what`` (default ``model bundle <path>``)."""
    from ..model.bundle import BundleError
    from ..model.bundle import load_bundle as load_bundle_folder
    from ..model.device import resolve_device

    path = Path(path)
    what = what or f"model bundle {path}"
    if not path.is_dir():
        raise NoInputError(f"{what}: model bundle folder not found")
    try:
        bundle = load_bundle_folder(path, device=resolve_device(device))
    except BundleError as exc:
        raise InputDataError(f"{what}: {exc}") from None
    return LoadedBundle(name, bundle, bundle_conditions(bundle))


def _volume(path: Path, what: str) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(str(path))
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim != 3:
        raise InputDataError(f"{path}: expected a 3-D {what}, got shape {data.shape}")
    return data, img.affine


def load_subject(run: "PreparedRun", with_dwi: bool = True) -> SubjectData:
    """Read a prepared run (the DWI series only ``with_dwi``); inconsistent files are an
    :class:`InputDataError` (65) naming the file."""
    b0, affine = _volume(run.b0ref, "b0 reference")
    mask = _volume(run.mask, "brain mask")[0] > 0
    if mask.shape != b0.shape:
        raise InputDataError(f"{run.mask}: mask {mask.shape} is not on the grid of {run.b0ref} {b0.shape}")
    if not mask.any():
        raise InputDataError(f"{run.mask}: the brain mask is empty")
    table = read_fsl(run.bval, run.bvec)
    dwi = None
    if with_dwi:
        dwi = np.asarray(nib.load(str(run.dwi)).dataobj, dtype=np.float32)
        if dwi.ndim != 4 or dwi.shape[:3] != b0.shape:
            raise InputDataError(f"{run.dwi}: expected a 4-D series on the grid {b0.shape}, got shape {dwi.shape}")
        if table.bvals.size != dwi.shape[3]:
            raise InputDataError(f"{run.bval}: {table.bvals.size} b-values for {dwi.shape[3]} volumes")
    scale = float(Normaliser.from_b0(b0, mask).scale)
    return SubjectData(run, b0, mask, affine, table.bvals, table.bvecs, scale, dwi)


def synthesise_run(loaded: LoadedBundle, subject: SubjectData, scheme: TargetScheme, sampler: SamplerConfig, *,
                   seed: int, batch_size: int | None = None, samples: int = 1, progress: bool = True
                   ) -> tuple[Synthesis, float]:
    """Synthesise ``scheme`` for ``subject`` from its b0 reference with ``loaded``'s model and atlases.

    Returns ``(Synthesis (X, Y, Z, N) signal units, seconds)``. The run must be on the bundle's grid, else
    :class:`~.grid.GridMismatchError` (65) naming its b0 reference. A bundle with a context takes it from the
    run's own acquired shell (:func:`run_context`).
    """
    bundle, conditions = loaded.bundle, loaded.conditions
    check_grid(bundle.grid, subject.b0.shape, subject.affine, str(subject.run.b0ref))
    start = time.perf_counter()
    context = run_context(loaded, subject)
    result = synthesise(bundle.model, subject.b0, subject.mask, scheme, conditions.adc_atlas, conditions.shells,
                        slice_grid(bundle.grid, bundle.model), sampler, samples=samples, batch_size=batch_size,
                        seed=seed, tracts=conditions.tracts, progress=progress, context=context)
    return result, time.perf_counter() - start


@dataclass(frozen=True)
class ContextSource:
    """The acquired volumes a context is fitted from: the b0 volumes and one shell (``bval``, s/mm^2) of a
    run; ``dwi`` ``(X, Y, Z, M)`` signal units with its ``bvals`` ``(M,)`` and ``bvecs`` ``(M, 3)``."""

    bval: float
    dwi: np.ndarray
    bvals: np.ndarray
    bvecs: np.ndarray


def context_source(loaded: LoadedBundle, subject: SubjectData) -> ContextSource | None:
    """What the bundle's model takes its context from in this run (None for the b0-only model): the
    lowest acquired shell among those the bundle was trained to take its context from (bundle metadata
    ``context.shells``; any shell when it names none). A run without such a shell is an
    :class:`InputDataError` (exit 65) naming the run's DWI file."""
    from ..prep.gradients import B0_THRESHOLD, SHELL_TOLERANCE, unique_shells
    from ..train.context import context_shells_of

    kind = loaded.bundle.model.config.context
    if kind == "none":
        return None
    wanted = (loaded.bundle.metadata.get("context") or {}).get("shells")
    shells = context_shells_of(subject.bvals, wanted)
    if not shells:
        present = [float(b) for b in unique_shells(subject.bvals[subject.bvals > B0_THRESHOLD])]
        raise InputDataError(
            f"{subject.run.dwi}: model bundle {loaded.bundle.path} synthesises from a {kind!r} context of an "
            f"acquired shell b = {wanted} s/mm^2, and this run has none of them (its shells: {present})")
    keep = np.flatnonzero((subject.bvals <= B0_THRESHOLD) | (np.abs(subject.bvals - shells[0]) <= SHELL_TOLERANCE))
    if subject.dwi is not None:
        dwi = subject.dwi[..., keep]
    else:
        img = nib.load(str(subject.run.dwi))
        if img.ndim != 4 or img.shape[:3] != subject.b0.shape or img.shape[3] != subject.bvals.size:
            raise InputDataError(f"{subject.run.dwi}: expected a 4-D series of {subject.bvals.size} volumes on the "
                                 f"grid {subject.b0.shape}, got shape {img.shape}")
        dwi = np.stack([np.asarray(img.dataobj[..., i], dtype=np.float32) for i in keep], axis=-1)
    return ContextSource(float(shells[0]), dwi, subject.bvals[keep], subject.bvecs[keep])


def run_context(loaded: LoadedBundle, subject: SubjectData) -> np.ndarray | None:
    """The context maps ``(X, Y, Z, C)`` the bundle's model needs (None for the b0-only model), fitted to
    :func:`context_source`'s volumes (same errors)."""
    from ..prep.context import context_maps

    source = context_source(loaded, subject)
    if source is None:
        return None
    kind = loaded.bundle.model.config.context
    try:
        maps = context_maps(kind, source.dwi, source.bvals, source.bvecs, subject.mask, shells=[source.bval],
                            scale=subject.scale)
    except ValueError as error:
        raise InputDataError(f"{subject.run.dwi}: cannot fit the {kind!r} context ({error})") from None
    log.info("%s context from the b = %g shell of %s", kind, source.bval, subject.run.dwi)
    return maps


def synthesise_acquired(loaded: LoadedBundle, subject: SubjectData, sampler: SamplerConfig, seed: int,
                        batch_size: int = 64, volumes: Sequence[int] | None = None) -> tuple[np.ndarray, float]:
    """Synthesise the run's acquired scheme (or the ``volumes`` of it), without a progress bar; for the
    evaluation. Returns ``(series (X, Y, Z, N') signal units, seconds)``."""
    from ..prep.gradients import B0_THRESHOLD

    index = np.arange(subject.bvals.size) if volumes is None else np.asarray(volumes, dtype=int)
    scheme = TargetScheme(subject.bvals[index], subject.bvecs[index], "acquired", B0_THRESHOLD)
    result, seconds = synthesise_run(loaded, subject, scheme, sampler, seed=seed, batch_size=batch_size,
                                     progress=False)
    return result.mean, seconds


def model_evaluations(bundle, sampler: SamplerConfig) -> int:
    """How many times ``sampler`` evaluates ``bundle``'s network per slice (1 for a regression model;
    DDPM from SDEdit strength 0.8 of 1000 steps runs 801)."""
    from ..model.sampling import timesteps

    if bundle.model.config.objective == "regression":
        return 1
    return len(timesteps(sampler, bundle.model.schedule.num_steps))
