"""Participant level, prepare: from a BIDS DWI run to the template grid (DESIGN.md section 2).

Per subject, :func:`init_participant_wf` registers each distinct T1w to the template once and builds one
:func:`init_dwi_prep_wf` per DWI run; each node is a thin interface over one prep/ function, so the work
dir caches every step and a rerun only repeats what changed.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..bids.checks import CheckedRun
from ..bids.derivatives import init_output_dir
from ..config import RunConfig
from ..prep.denoise import denoising_metadata
from ..prep.templates import TemplateGrid
from .denoise import Denoise
from .execution import run_workflow
from .interfaces import (
    B0Reference,
    BrainMask,
    RegisterB0,
    RegisterT1wToTemplate,
    RegistrationFigures,
    Resample,
    ReorientGradients,
    SubjectReport,
    WriteTransforms,
)
from .motion import EstimateMotion, MotionFigure
from .outputs import init_dwi_derivatives_wf, registration_path

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrepareSettings:
    """What the prepare workflows need from the run's configuration."""

    bids_dir: Path
    output_dir: Path
    threads: int = 1
    """ITK threads per registration or resampling node"""
    seed: int = 0
    b0_threshold: float = 50.0
    """s/mm^2"""
    hmc: str = "rigid"
    """head-motion correction: rigid or none"""
    fd_threshold: float = 1.0
    """mm; volumes above this framewise displacement are listed"""
    denoise: str = "none"
    """dipy denoising of raw series first: none, mppca or patch2self"""


def _identifier(text: str) -> str:
    """A Nipype node name from a BIDS name (letters, digits, underscores)."""
    return re.sub(r"\W", "_", text.replace("-", "_"))


def _same_session(run: CheckedRun) -> bool:
    t1w = run.run.t1w
    session = run.run.session
    return t1w is not None and ((session is None and "ses-" not in t1w.name) or f"ses-{session}_" in t1w.name)


def _series_gb(run: CheckedRun, grid: TemplateGrid) -> float:
    """Memory (GB) to resample a run's series: the float32 input and two copies of the template-grid
    output (the array and the one being written), plus the interpreter, ITK and nibabel."""
    n = run.shape[3] if len(run.shape) > 3 else 1
    voxels_in = int(np.prod(run.shape[:3])) * n
    voxels_out = int(np.prod(grid.shape)) * n
    return round(REGISTRATION_GB / 2 + 4 * (voxels_in + 2 * voxels_out) / 1e9, 2)


REGISTRATION_GB = 1.0
"""Memory (GB) of one antspyx registration at the grids used here (SyN of a 2 mm template, ~0.3 GB
measured at 64x64x40; the margin covers 1 mm templates). Nipype's MultiProc and cluster plugins schedule
by this ``mem_gb``."""


def init_t1w_wf(t1w: Path, grid: TemplateGrid, settings: PrepareSettings, name: str = "t1w_wf") -> pe.Workflow:
    """Register a T1w to the template (affine + SyN) and resample it there.

    Parameters
    ----------
    t1w
        The T1w image of the input dataset.
    grid
        The template grid.
    settings
        Threads and seed of the registration.

    Inputs
    ------
    None (the T1w is a parameter).

    Outputs
    -------
    chain
        JSON of the T1w -> template :class:`~bids_phydiff.prep.transforms.TransformChain`.
    brain
        The T1w times its brain mask (the target of the b0 -> T1w registration).
    t1w_template
        The T1w resampled into the template, for the report.
    """
    wf = pe.Workflow(name=name)
    outputnode = pe.Node(niu.IdentityInterface(["chain", "brain", "t1w_template"]), name="outputnode")
    register = pe.Node(RegisterT1wToTemplate(t1w=str(t1w), grid=grid.to_dict(), threads=settings.threads,
                                             seed=settings.seed), name="register", n_procs=settings.threads,
                       mem_gb=REGISTRATION_GB)
    xfm = pe.Node(WriteTransforms(threads=settings.threads), name="transforms")
    warp = pe.Node(Resample(in_file=str(t1w), grid=grid.to_dict(), threads=settings.threads), name="resample",
                   n_procs=settings.threads, mem_gb=REGISTRATION_GB / 2)
    wf.connect([
        (register, xfm, [("out_chain", "in_chain")]),
        (xfm, warp, [("forward", "transform")]),
        (register, outputnode, [("out_chain", "chain"), ("brain", "brain")]),
        (warp, outputnode, [("out_file", "t1w_template")]),
    ])
    return wf


def init_dwi_prep_wf(run: CheckedRun, grid: TemplateGrid, settings: PrepareSettings, with_t1w: bool,
                     name: str | None = None) -> pe.Workflow:
    """Prepare one DWI run: optional denoising (``settings.denoise``, :class:`.denoise.Denoise`), b0 reference,
    brain mask (a preprocessed run's own mask when it has one), head-motion correction (``settings.hmc ==
    "rigid"``: one rigid transform per volume onto the corrected b0 reference, :class:`.motion.EstimateMotion`),
    registration, one resampling of each volume through its own composed chain, b-vectors rotated per
    volume, derivatives (:func:`.outputs.init_dwi_derivatives_wf`, with the motion confounds) and the run's
    report figures (with the motion trace). A preprocessed run (``run.run.preprocessed``) is neither
    denoised nor motion-corrected.

    Parameters
    ----------
    run
        The checked DWI run (its gradients and shape are known).
    grid
        The template grid to resample onto.
    settings
        Where inputs and outputs live, threads, seed, b0 threshold, head-motion correction and FD threshold.
    with_t1w
        Register the b0 through the subject's T1w (the inputs below are then connected).

    Inputs
    ------
    t1w_brain, t1w_chain, t1w_template
        From :func:`init_t1w_wf` (only ``with_t1w``).

    Outputs
    -------
    figures, titles, captions
        Lists of the run's registration figures, for the subject's report.
    """
    dwi = run.run
    wf = pe.Workflow(name=name or "dwi_" + _identifier(dwi.prefix.split("_", 1)[1] if "_" in dwi.prefix else "run")
                     + "_wf")
    inputnode = pe.Node(niu.IdentityInterface(["t1w_brain", "t1w_chain", "t1w_template"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(["figures", "titles", "captions"]), name="outputnode")
    threads, g = settings.threads, grid.to_dict()

    denoise = None
    if settings.denoise != "none" and not dwi.preprocessed:
        denoise = pe.Node(Denoise(in_dwi=str(dwi.dwi), in_bval=str(dwi.bval), method=settings.denoise,
                                  b0_threshold=settings.b0_threshold), name="denoise", mem_gb=2 * _series_gb(run, grid))
    series = {} if denoise else {"in_dwi": str(dwi.dwi)}  # else connected from the denoised series
    b0ref = pe.Node(B0Reference(**series, in_bval=str(dwi.bval), threshold=settings.b0_threshold),
                    name="b0_reference", mem_gb=_series_gb(run, grid) / 2)
    if denoise is not None:
        wf.connect(denoise, "out_file", b0ref, "in_dwi")
    if dwi.mask is not None:
        mask = pe.Node(niu.IdentityInterface(["out_file"]), name="given_mask")
        mask.inputs.out_file = str(dwi.mask)
    else:
        mask = pe.Node(BrainMask(), name="brain_mask")
    hmc = None
    if settings.hmc == "rigid" and not dwi.preprocessed:
        # the raw b0 mean and its mask guide the motion correction; the corrected b0 mean (the frame of the
        # per-volume transforms) and its own mask take their place downstream
        raw_mask = pe.Node(BrainMask(), name="hmc_brain_mask")
        hmc = pe.Node(EstimateMotion(**series, in_bval=str(dwi.bval),
                                     b0_threshold=settings.b0_threshold, fd_threshold=settings.fd_threshold,
                                     threads=threads, seed=settings.seed), name="hmc", n_procs=threads,
                      mem_gb=REGISTRATION_GB + _series_gb(run, grid) / 2)
        wf.connect([(b0ref, raw_mask, [("out_file", "in_file")]), (raw_mask, hmc, [("out_file", "mask")])]
                   + ([(denoise, hmc, [("out_file", "in_dwi")])] if denoise is not None else []))
        b0ref = pe.Node(niu.IdentityInterface(["out_file"]), name="hmc_b0_reference")
        wf.connect(hmc, "b0_reference", b0ref, "out_file")
    init = "identity" if _same_session(run) else "center_of_mass"
    register = pe.Node(RegisterB0(grid=g, threads=threads, seed=settings.seed, init=init), name="register",
                       n_procs=threads, mem_gb=REGISTRATION_GB)
    xfm = pe.Node(WriteTransforms(threads=threads), name="transforms")
    resample_dwi = pe.Node(Resample(**({} if denoise else {"in_file": str(dwi.dwi)}), grid=g, threads=threads),
                           name="resample_dwi", n_procs=threads, mem_gb=_series_gb(run, grid))
    if denoise is not None:
        wf.connect(denoise, "out_file", resample_dwi, "in_file")
    if dwi.mask is None:
        wf.connect(b0ref, "out_file", mask, "in_file")
    resample_b0 = pe.Node(Resample(grid=g, threads=threads), name="resample_b0")
    resample_mask = pe.Node(Resample(grid=g, mask=True, threads=threads), name="resample_mask")
    gradients = pe.Node(ReorientGradients(in_bval=str(dwi.bval), in_bvec=str(dwi.bvec), source_image=str(dwi.dwi)),
                        name="reorient_gradients")
    provenance = {"InputType": "preprocessed" if dwi.preprocessed else "raw",
                  "HeadMotionCorrection": "rigid" if hmc is not None else "none",
                  "Denoising": denoising_metadata(settings.denoise, run.shape[3]) if denoise else {"Method": "none"}}
    derivatives = init_dwi_derivatives_wf(run, grid, settings.bids_dir, settings.output_dir, settings.b0_threshold,
                                          with_t1w, hmc=hmc is not None, provenance=provenance)
    wf.connect([
        (b0ref, register, [("out_file", "b0")]),
        (mask, register, [("out_file", "b0_mask")]),
        (register, xfm, [("out_chain", "in_chain")]),
        (xfm, resample_dwi, [("forward", "transform")]),
        (xfm, resample_b0, [("forward", "transform")]),
        (b0ref, resample_b0, [("out_file", "in_file")]),
        (xfm, resample_mask, [("forward", "transform")]),
        (mask, resample_mask, [("out_file", "in_file")]),
        (xfm, gradients, [("forward", "transform")]),
        (resample_dwi, gradients, [("out_file", "target_image")]),
        (resample_dwi, derivatives, [("out_file", "inputnode.dwi")]),
        (gradients, derivatives, [("out_bval", "inputnode.bval"), ("out_bvec", "inputnode.bvec")]),
        (resample_b0, derivatives, [("out_file", "inputnode.dwiref")]),
        (resample_mask, derivatives, [("out_file", "inputnode.mask")]),
        (xfm, derivatives, [("forward", "inputnode.forward"), ("inverse", "inputnode.inverse")]),
    ])
    if with_t1w:
        wf.connect([(inputnode, register, [("t1w_brain", "t1w_brain"), ("t1w_chain", "t1w_chain")])])

    figures = pe.Node(RegistrationFigures(run_name=dwi.prefix, grid=g, path=registration_path(with_t1w)),
                      name="figures")
    wf.connect([
        (b0ref, figures, [("out_file", "b0_native")]),
        (mask, figures, [("out_file", "mask_native")]),
        (resample_b0, figures, [("out_file", "b0_template")]),
    ])
    if hmc is None:
        wf.connect([(figures, outputnode, [("figures", "figures"), ("titles", "titles"), ("captions", "captions")])])
    else:
        motion = pe.Node(MotionFigure(run_name=dwi.prefix, fd_threshold=settings.fd_threshold), name="motion_figure")
        wf.connect([
            (hmc, resample_dwi, [("transforms", "volume_transforms")]),
            (hmc, gradients, [("transforms", "volume_transforms")]),
            (hmc, derivatives, [("confounds", "inputnode.confounds"), ("confounds_meta", "inputnode.confounds_meta")]),
            (hmc, motion, [("confounds", "confounds")]),
        ])
        for key in ("figures", "titles", "captions"):
            both = pe.Node(niu.Merge(2), name=f"all_{key}", run_without_submitting=True)
            wf.connect([(figures, both, [(key, "in1")]), (motion, both, [(key, "in2")]),
                        (both, outputnode, [("out", key)])])
    if with_t1w:
        wf.connect([(inputnode, figures, [("t1w_template", "t1w_template")])])
    return wf


def init_participant_wf(subject: str, runs: list[CheckedRun], grid: TemplateGrid, settings: PrepareSettings
                        ) -> pe.Workflow:
    """All DWI runs of one subject (every session) and its report.

    Each distinct T1w is registered to the template once (:func:`init_t1w_wf`) and shared by the runs paired
    with it; each run is one :func:`init_dwi_prep_wf`.

    Parameters
    ----------
    subject
        The label, without ``sub-``.
    runs
        The subject's checked DWI runs.
    grid, settings
        As for :func:`init_dwi_prep_wf`.

    Inputs
    ------
    None.

    Outputs
    -------
    None: the runs' derivatives and ``output_dir/sub-<subject>.html``.
    """
    wf = pe.Workflow(name=f"sub_{_identifier(subject)}_wf")
    t1w_wfs = {}
    for t1w in sorted({r.run.t1w for r in runs if r.run.t1w is not None}):
        label = _identifier(t1w.name.split(".")[0].split("_", 1)[1]) if "_" in t1w.name else "t1w"
        t1w_wfs[t1w] = init_t1w_wf(t1w, grid, settings, name=f"anat_{label}_wf")
    merge = {key: pe.Node(niu.Merge(len(runs), no_flatten=True), name=f"merge_{key}") for key in ("figures", "titles", "captions")}
    notes = [f"Template {grid.name} at {grid.resolution_mm:g} mm, grid {grid.shape}."]
    raw = [r for r in runs if not r.run.preprocessed]
    if settings.denoise != "none" and raw:
        notes.append(f"Raw DWI denoised first ({settings.denoise}, dipy).")
    if settings.hmc == "rigid" and raw:
        notes.append("Head motion corrected per volume (rigid), composed with the template registration.")
    if len(raw) < len(runs):
        notes.append("Preprocessed input (desc-preproc DWI): not denoised or motion-corrected again; the brain mask "
                     "that came with it is used where there is one.")
    for i, run in enumerate(runs, start=1):
        with_t1w = run.run.t1w is not None
        dwi_wf = init_dwi_prep_wf(run, grid, settings, with_t1w)
        if with_t1w:
            wf.connect([(t1w_wfs[run.run.t1w], dwi_wf, [
                ("outputnode.brain", "inputnode.t1w_brain"),
                ("outputnode.chain", "inputnode.t1w_chain"),
                ("outputnode.t1w_template", "inputnode.t1w_template"),
            ])])
            notes.append(f"{run.run.dwi.name}: b0 registered to {run.run.t1w.name}, T1w to the template.")
        else:
            wf.add_nodes([dwi_wf])
            notes.append(f"{run.run.dwi.name}: no T1w; b0 registered to the template directly.")
        for key, node in merge.items():
            wf.connect(dwi_wf, f"outputnode.{key}", node, f"in{i}")
    report = pe.Node(SubjectReport(subject=subject, output_dir=str(settings.output_dir), notes=notes),
                     name="report", run_without_submitting=True)
    for key, node in merge.items():
        wf.connect(node, "out", report, key)
    return wf


def run_participant(config: RunConfig, checked: list[CheckedRun]) -> None:
    """Prepare every checked run with the run's configuration.

    The template is resolved before any workflow is built, so a template missing offline fails at once.
    """
    from ..prep.templates import load_template

    grid = load_template(config.template, config.output_resolution)
    LOGGER.info("template %s at %g mm: grid %s (from %g mm files in %s)", grid.name, grid.resolution_mm,
                grid.shape, grid.source_resolution_mm, grid.home)
    init_output_dir(config.output_dir, config.bids_dir)
    settings = PrepareSettings(config.bids_dir, config.output_dir, config.omp_nthreads, config.seed,
                               config.b0_threshold, config.hmc, config.fd_threshold, config.denoise)
    if any(r.run.preprocessed for r in checked) and config.denoise != "none":
        LOGGER.warning("--denoise %s: not applied to preprocessed input", config.denoise)
    wf = pe.Workflow(name="bids_phydiff_prepare_wf")
    subjects = sorted({r.run.subject for r in checked})
    for subject in subjects:
        wf.add_nodes([init_participant_wf(subject, [r for r in checked if r.run.subject == subject], grid, settings)])
    LOGGER.info("preparing %d run(s) of %d subject(s)", len(checked), len(subjects))
    run_workflow(wf, config.work_dir, config.output_dir / "logs" / "crash", config.nprocs, config.mem_gb,
                 config.plugin or None, config.stop_on_first_crash)
    for subject in subjects:
        LOGGER.info("report: %s", config.output_dir / f"sub-{subject}.html")
