"""Generate the whole phantom: BIDS raw dataset, TemplateFlow template, tract atlas and ground truth.

Layout of ``out_dir``::

    dataset_description.json, README, CHANGES, participants.tsv/.json
    sub-XX[/ses-Y]/anat/sub-XX[_ses-Y]_T1w.nii.gz (+ .json)
    sub-XX[/ses-Y]/dwi/sub-XX[_ses-Y][_run-R]_dwi.nii.gz (+ .bval .bvec .json)
    sourcedata/templateflow/tpl-<Name>/...          (a TemplateFlow home)
    sourcedata/truth/sub-XX[/ses-Y]/...              (ground truth on the subject's DWI grid)
    sourcedata/truth/sub-XX[/ses-Y]/<run>_motion.tsv (true per-volume head motion, only with motion_mm > 0)
    sourcedata/truth/template/res-RR/...             (ground truth on the template grid)
    sourcedata/truth/phantom.json                    (the configuration and what was written)

Randomness: subject i draws everything from ``SeedSequence(seed, spawn_key=(i, ...))``, so a subject
does not change when more subjects are asked for. Sessions of a subject share its anatomy
(smooth deformation) and differ in head position; runs of a session share the head position and
differ in noise (and, with ``motion_mm`` > 0, each run has its own head motion: see :mod:`.motion`).
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from ..atomic import staging_dir
from ..errors import OutputError
from ..prep.gradients import GradientTable, multishell_scheme, write_fsl
from .anatomy import HEAD_SEMI_AXES, tissue_fractions
from .config import PhantomConfig
from .deformation import random_rigid, random_warp
from .grid import Grid, centred_grid
from .motion import moved, random_motion, write_motion_truth
from .nifti import save_nifti
from .signal import TissueModel, add_rician_noise
from .template import resolution_label, write_template
from .truth import render_truth, truth_folder
from .writer import T1W_SIDECAR, bids_stem, datatype_dir, dwi_sidecar, write_json, write_top_level

log = logging.getLogger(__name__)

FOV_MARGIN_MM = 4.0
"""Room left around the moved head in the subject field of view, beyond translation and warp."""

_KEY_WARP, _KEY_RIGID, _KEY_DWI_NOISE, _KEY_T1W_NOISE, _KEY_MOTION = range(5)

MOTION_REACH = 1.0 + np.deg2rad(1.0) * max(HEAD_SEMI_AXES)


@dataclass(frozen=True)
class PhantomDataset:
    """Where a generated phantom lies.

    ``subjects``: labels without ``sub-``; ``sessions``: labels without ``ses-``, ``(None,)`` when the
    dataset has no session level; ``template_resolution``: res label of the main template (e.g. ``"04"``);
    ``atlas_dseg``/``atlas_probseg``: the tract atlas at that resolution.
    """

    bids_dir: Path
    templateflow_home: Path
    truth_dir: Path
    template_name: str
    subjects: tuple[str, ...]
    sessions: tuple[str | None, ...]
    template_resolution: str
    atlas_dseg: Path
    atlas_probseg: Path
    config: PhantomConfig

    def dwi_files(self, subject: str, session: str | None = None) -> list[Path]:
        """The subject's DWI images (all runs) of ``session``."""
        folder = datatype_dir(self.bids_dir, subject, session, "dwi")
        return sorted(folder.glob("*_dwi.nii.gz"))


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def gradient_scheme(config: PhantomConfig) -> GradientTable:
    """The acquisition's gradient table (FSL b-vectors): b0 volumes spread evenly through the series."""
    table = multishell_scheme(list(config.shells), config.directions, n_b0=config.n_b0, seed=config.seed)
    n = len(table)
    b0_slots = np.unique(np.round(np.arange(config.n_b0) * n / config.n_b0).astype(int))
    order = np.empty(n, dtype=int)
    is_b0 = np.zeros(n, dtype=bool)
    is_b0[b0_slots] = True
    order[is_b0] = np.arange(config.n_b0)[: is_b0.sum()]
    order[~is_b0] = np.arange(config.n_b0, n)
    return table.select(order)


def subject_grids(config: PhantomConfig, orientation: str) -> tuple[Grid, Grid]:
    """``(dwi_grid, t1w_grid)``: same field of view, centred on the scanner origin."""
    half = np.asarray(HEAD_SEMI_AXES) + config.translation_mm + config.deformation_mm + FOV_MARGIN_MM
    if config.motion_mm > 0:  # room for the head's motion during the run (mm per motion_mm: shift + turn)
        half = half + MOTION_REACH * config.motion_mm
    return centred_grid(half, config.resolution, orientation), centred_grid(half, config.t1w_voxel, orientation)


def _write_subject(root: Path, truth_root: Path, config: PhantomConfig, index: int, label: str,
                   scheme: GradientTable, model: TissueModel) -> None:
    """All sessions and runs of subject ``index`` (0-based), labelled ``label``."""
    orientation = config.orientations[index % len(config.orientations)]
    dwi_grid, t1w_grid = subject_grids(config, orientation)
    warp = random_warp(_rng(config.seed, index, _KEY_WARP), config.deformation_mm)
    sigma = model.s0_wm / config.snr
    sidecar = dwi_sidecar(config, dwi_grid.shape[2])
    for s, session in enumerate(config.session_labels):
        rotation, translation = random_rigid(
            _rng(config.seed, index, _KEY_RIGID, s), config.rotation_deg, config.translation_mm
        )
        deformation = warp.with_rigid(rotation, translation)
        dwi_dir = datatype_dir(root, label, session, "dwi")
        stems = [bids_stem(label, session, run) for run in config.run_labels]
        t1w_path = None
        if label not in config.without_t1w:
            t1w_path = datatype_dir(root, label, session, "anat") / f"{bids_stem(label, session)}_T1w.nii.gz"
        metadata = {
            "space": "subject DWI grid",
            "subject": label,
            "session": session,
            "template": config.template_name,
            "seed": config.seed,
            "snr": config.snr,
            "sigma": sigma,
            "dwi_orientation": orientation,
            "dwi_files": [str((dwi_dir / f"{stem}_dwi.nii.gz").relative_to(root)) for stem in stems],
            "t1w_file": None if t1w_path is None else str(t1w_path.relative_to(root)),
            "tissue_model": asdict(model),
        }
        truth = render_truth(dwi_grid, deformation, model, metadata)
        truth.write(truth_folder(truth_root, label, session))
        clean = truth.signal(scheme.bvals, scheme.bvecs) if config.motion_mm == 0 else None
        for r, stem in enumerate(stems):
            if config.motion_mm > 0:
                params = random_motion(_rng(config.seed, index, _KEY_MOTION, s, r), len(scheme), config.motion_mm)
                write_motion_truth(truth_folder(truth_root, label, session) / f"{stem}_motion.tsv", params)
                clean = _moving_head_signal(dwi_grid, deformation, model, scheme, params)
            noisy = add_rician_noise(clean, sigma, _rng(config.seed, index, _KEY_DWI_NOISE, s, r))
            save_nifti(dwi_dir / f"{stem}_dwi.nii.gz", noisy, dwi_grid.affine, np.int16,
                       repetition_time=sidecar["RepetitionTime"])
            write_fsl(scheme, dwi_dir / f"{stem}_dwi.bval", dwi_dir / f"{stem}_dwi.bvec")
            write_json(dwi_dir / f"{stem}_dwi.json", sidecar)
        if t1w_path is not None:
            tissue = tissue_fractions(deformation.to_template(t1w_grid.world_points()), t1w_grid.voxel_size)
            t1w = model.t1w(tissue).reshape(t1w_grid.shape)
            t1w = add_rician_noise(t1w, model.t1w_wm / config.t1w_snr, _rng(config.seed, index, _KEY_T1W_NOISE, s))
            save_nifti(t1w_path, t1w, t1w_grid.affine, np.int16)
            write_json(t1w_path.with_name(f"{bids_stem(label, session)}_T1w.json"), T1W_SIDECAR)
    log.info("subject %s: DWI grid %s (%s), %d session(s)", label, dwi_grid.shape, orientation,
             len(config.session_labels))


def _moving_head_signal(grid: Grid, deformation, model: TissueModel, scheme: GradientTable,
                        params: np.ndarray) -> np.ndarray:
    """Noise-free DWI ``(X, Y, Z, N)``: volume ``v`` rendered from the anatomy with the head moved by
    ``params[v]``, measured with the nominal (scanner-frame) gradient of the scheme."""
    out = np.empty((*grid.shape, len(scheme)), dtype=np.float64)
    for v in range(len(scheme)):
        truth = render_truth(grid, moved(deformation, params[v]), model)
        out[..., v] = truth.signal(scheme.bvals[v:v + 1], scheme.bvecs[v:v + 1])[..., 0]
    return out


def _prepare_target(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise OutputError(
                f"{out_dir}: folder is not empty (pass overwrite=True to replace an earlier phantom)"
            )
        if not (out_dir / "sourcedata" / "truth" / "phantom.json").is_file():
            raise OutputError(
                f"{out_dir}: not empty and not a phantom written by this generator; refusing to replace it"
            )


def generate(out_dir: str | Path, config: PhantomConfig | None = None, *, overwrite: bool = False,
             model: TissueModel | None = None) -> PhantomDataset:
    """Write the phantom described by ``config`` to ``out_dir`` (the BIDS root) and say where things are.

    The dataset is assembled in a hidden sibling folder and moved into place at the end, so an
    interrupted run leaves no half-written dataset. ``overwrite`` replaces an earlier phantom.
    """
    config = config or PhantomConfig()
    model = model or TissueModel()
    out_dir = Path(out_dir).absolute()
    _prepare_target(out_dir, overwrite)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        work = staging_dir(out_dir.parent, prefix=f".{out_dir.name}.", suffix=".partial")
    except OSError as exc:
        raise OutputError(f"{out_dir}: cannot write there ({exc})") from None
    try:
        _write_all(work, config, model)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            out_dir.rename(old)
            work.rename(out_dir)
            shutil.rmtree(old)
        else:
            work.rename(out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return _dataset(out_dir, config)


def _dataset(root: Path, config: PhantomConfig) -> PhantomDataset:
    res = resolution_label(config.template_resolution)
    home = root / "sourcedata" / "templateflow"
    prefix = home / f"tpl-{config.template_name}" / f"tpl-{config.template_name}_res-{res}"
    return PhantomDataset(
        bids_dir=root,
        templateflow_home=home,
        truth_dir=root / "sourcedata" / "truth",
        template_name=config.template_name,
        subjects=config.subject_labels,
        sessions=config.session_labels,
        template_resolution=res,
        atlas_dseg=Path(f"{prefix}_atlas-Tracts_dseg.nii.gz"),
        atlas_probseg=Path(f"{prefix}_atlas-Tracts_probseg.nii.gz"),
        config=config,
    )


def _config_json(config: PhantomConfig) -> dict:
    """The configuration as written to phantom.json (``motion_mm`` only when used, so a still phantom's
    files are those of earlier versions)."""
    data = asdict(config)
    if not config.motion_mm:
        data.pop("motion_mm")
    return data


def _write_all(root: Path, config: PhantomConfig, model: TissueModel) -> None:
    truth_root = root / "sourcedata" / "truth"
    home = root / "sourcedata" / "templateflow"
    templates = write_template(home, config.template_name, config.all_template_resolutions, model)
    for res, files in templates.items():
        files.truth.write(truth_root / "template" / f"res-{res}")
    scheme = gradient_scheme(config)
    orientations = {}
    for index, label in enumerate(config.subject_labels):
        _write_subject(root, truth_root, config, index, label, scheme, model)
        orientations[label] = config.orientations[index % len(config.orientations)]
    write_top_level(root, config, orientations)
    summary = {
        "generator": f"bids_phydiff.phantom {__version__}",
        "config": _config_json(config),
        "tissue_model": asdict(model),
        "subjects": list(config.subject_labels),
        "sessions": [s for s in config.session_labels if s is not None],
        "dwi_orientation": orientations,
        "template": config.template_name,
        "template_resolutions": list(templates),
        "templateflow_home": "sourcedata/templateflow",
    }
    write_json(truth_root / "phantom.json", summary)
