"""Group level: train a Phy-Diff bundle on the prepared subjects of ``output_dir`` (DESIGN.md section 2).

Training is one process per device (``torchrun`` starts K of them), so this level is a function, not a
Nipype graph: :func:`bids_phydiff.bids.prepared.find_prepared` finds the prepared runs, :func:`split_subjects` holds
some out for validation, :func:`find_tract_atlas` picks the atlas of the adapter stage, and
:func:`run_group` hands everything to :func:`bids_phydiff.train.run.train_bundle`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np

from ..bids.prepared import PreparedRun, find_prepared
from ..config import RunConfig
from ..errors import EmptySelectionError, InputDataError, NoInputError, UsageError
from ..model.bundle import GridSpec
from ..prep.grid import same_grid
from ..spaces import XTRACT_TEMPLATE

LOGGER = logging.getLogger(__name__)



def split_subjects(subjects: list[str], val_subjects: tuple[str, ...] | None, seed: int) -> tuple[list, list]:
    """(training, validation) subject labels. ``val_subjects`` None: with 3 or more subjects, 20% (at least
    one) drawn with ``seed``; with fewer, no validation set."""
    subjects = sorted(set(subjects))
    if val_subjects is not None:
        unknown = sorted(set(val_subjects) - set(subjects))
        if unknown:
            raise EmptySelectionError(f"--val-subjects {unknown}: no prepared runs for them (have {subjects})")
        val = sorted(set(val_subjects))
    elif len(subjects) >= 3:
        rng = np.random.default_rng(seed)
        val = sorted(rng.choice(subjects, size=max(1, round(0.2 * len(subjects))), replace=False).tolist())
    else:
        val = []
    train = [s for s in subjects if s not in val]
    if not train:
        raise UsageError(f"every subject is held out for validation ({val}); nothing left to train on")
    return train, val


def grid_of(runs: list[PreparedRun], template: str, resolution_mm: float) -> GridSpec:
    """The model grid: the grid all prepared runs share; a run on another grid is an error naming it."""
    first = nib.load(str(runs[0].dwi))
    for run in runs[1:]:
        img = nib.load(str(run.dwi))
        if not same_grid(img.shape, img.affine, first.shape, first.affine):
            raise InputDataError(f"{run.dwi}: grid {img.shape[:3]} differs from {runs[0].dwi} {first.shape[:3]}; "
                                 "prepare all subjects with the same --template and --output-resolution")
    return GridSpec(template, resolution_mm, tuple(first.shape[:3]), tuple(map(tuple, first.affine.tolist())))


def find_tract_atlas(given: Path | None, use: bool, template: str, home: Path | None) -> Path | None:
    """The tract atlas for the adapter stage: ``given``; else a ``tpl-<template>_*atlas-XTRACT|Tracts_probseg``
    in the TemplateFlow home; else FSL's XTRACT when the template is its space. None (stage 1 only) when
    ``use`` is False or nothing is found."""
    if not use:
        return None
    if given is not None:
        if template != XTRACT_TEMPLATE and "xtract" in given.name.lower():
            LOGGER.warning("%s is an XTRACT atlas (space %s) but the template is %s", given, XTRACT_TEMPLATE, template)
        return given
    if home is not None:
        folder = Path(home) / f"tpl-{template}"
        found = sorted(folder.glob(f"tpl-{template}_*atlas-XTRACT*_probseg.nii.gz")) + sorted(
            folder.glob(f"tpl-{template}_*atlas-XTRACT*_dseg.nii.gz")) + sorted(
            folder.glob(f"tpl-{template}_*atlas-Tracts*_probseg.nii.gz"))
        if found:
            return found[0]
    if template == XTRACT_TEMPLATE:
        from ..prep.tracts import default_xtract_path

        try:
            return default_xtract_path()
        except NoInputError as exc:
            LOGGER.warning("%s; training without the XTRACT adapter stage (give --xtract-atlas)", exc)
            return None
    LOGGER.warning("no tract atlas for template %s; training without the adapter stage", template)
    return None


def run_group(config: RunConfig) -> Path | None:
    """Train ``output_dir/models/model-<label>`` from the prepared runs; ``config`` is the run's
    :class:`~bids_phydiff.config.RunConfig`. Returns the bundle folder (None on torchrun ranks other than 0)."""
    from ..prep.template_files import templateflow_home
    from ..prep.templates import load_template
    from ..prep.tracts import load_tract_atlas
    from ..train.config import load_train_config
    from ..train.run import train_bundle

    opts = config.train
    grid = load_template(config.template, config.output_resolution)
    runs = find_prepared(config.output_dir, config.participant_label, config.template, grid.res_label)
    train_subjects, val_subjects = split_subjects([r.subject for r in runs], opts.val_subjects, config.seed)
    train_runs = [r for r in runs if r.subject in train_subjects]
    val_runs = [r for r in runs if r.subject in val_subjects]
    spec = grid_of(runs, config.template, config.output_resolution)
    LOGGER.info("training on %d run(s) of sub-%s; validation: %s", len(train_runs), ", sub-".join(train_subjects),
                ", ".join(f"sub-{s}" for s in val_subjects) or "none")

    train_config = load_train_config(opts.train_config)
    changes = {"seed": config.seed}
    if opts.max_steps is not None:
        changes["max_steps"] = opts.max_steps
    if opts.batch_size is not None:
        changes["batch_size"] = opts.batch_size
    if opts.context is not None:
        changes["model"] = train_config.model_config().replace(context=opts.context)
    if opts.context_shells is not None:
        changes["context_shells"] = opts.context_shells
    train_config = train_config.replace(**changes)

    atlas_path = find_tract_atlas(opts.xtract_atlas, opts.use_xtract, config.template, templateflow_home())
    tracts = None
    if atlas_path is not None:
        tracts = load_tract_atlas(atlas_path, spec.shape, np.asarray(spec.affine))
        LOGGER.info("adapter stage with %s (%d tracts)", atlas_path, tracts.shape[3])

    out_dir = config.output_dir / "models" / f"model-{opts.model_label}"
    result = train_bundle(
        train_runs, val_runs, spec, out_dir, config.work_dir / "group" / f"model-{opts.model_label}", train_config,
        device=config.device, tract_atlas=tracts, resume=opts.resume, overwrite=opts.resume,
        metadata={"template": config.template, "resolution_mm": config.output_resolution,
                  "res_label": grid.res_label, "tract_atlas_source": None if atlas_path is None else str(atlas_path),
                  "bids_phydiff_run": config.run_id},
    )
    if result.bundle is not None:
        LOGGER.info("model bundle: %s (final validation loss %s)", result.bundle, result.metrics.get("final_val_loss"))
    return result.bundle
