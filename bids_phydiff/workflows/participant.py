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

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..bids.checks import CheckedRun
from ..bids.derivatives import bids_uri, init_output_dir, resampled_sidecar, space_metadata
from ..prep.templates import TemplateGrid
from .execution import run_workflow
from .interfaces import (
    B0Reference,
    BrainMask,
    DerivativesSink,
    RegisterB0,
    RegisterT1wToTemplate,
    RegistrationFigures,
    Resample,
    ReorientGradients,
    SubjectReport,
    WriteTransforms,
)

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


def _identifier(text: str) -> str:
    """A Nipype node name from a BIDS name (letters, digits, underscores)."""
    return re.sub(r"\W", "_", text.replace("-", "_"))


def _same_session(run: CheckedRun) -> bool:
    t1w = run.run.t1w
    session = run.run.session
    return t1w is not None and ((session is None and "ses-" not in t1w.name) or f"ses-{session}_" in t1w.name)


def init_t1w_wf(t1w: Path, grid: TemplateGrid, settings: PrepareSettings, name: str = "t1w_wf"):
    """T1w -> template (affine + SyN) and the T1w's brain.

    Outputs (``outputnode``): ``chain`` (JSON of the T1w -> template TransformChain), ``brain`` (T1w times
    the brain mask), ``t1w_template`` (the T1w resampled into the template, for the report).
    """
    wf = pe.Workflow(name=name)
    outputnode = pe.Node(niu.IdentityInterface(["chain", "brain", "t1w_template"]), name="outputnode")
    register = pe.Node(RegisterT1wToTemplate(t1w=str(t1w), grid=grid.to_dict(), threads=settings.threads,
                                             seed=settings.seed), name="register", n_procs=settings.threads)
    xfm = pe.Node(WriteTransforms(threads=settings.threads), name="transforms")
    warp = pe.Node(Resample(in_file=str(t1w), grid=grid.to_dict(), threads=settings.threads), name="resample",
                   n_procs=settings.threads)
    wf.connect([
        (register, xfm, [("out_chain", "in_chain")]),
        (xfm, warp, [("forward", "transform")]),
        (register, outputnode, [("out_chain", "chain"), ("brain", "brain")]),
        (warp, outputnode, [("out_file", "t1w_template")]),
    ])
    return wf


def init_dwi_prep_wf(run: CheckedRun, grid: TemplateGrid, settings: PrepareSettings, with_t1w: bool,
                     name: str | None = None):
    """Prepare one DWI run: b0 reference, brain mask, registration, one resampling, rotated bvecs.

    Inputs (``inputnode``, only ``with_t1w``): ``t1w_brain``, ``t1w_chain``, ``t1w_template``.
    Writes the derivatives of DESIGN.md section 5 for the run. Outputs (``outputnode``): ``figures``,
    ``titles``, ``captions`` (lists, for the subject's report).
    """
    dwi = run.run
    wf = pe.Workflow(name=name or "dwi_" + _identifier(dwi.prefix.split("_", 1)[1] if "_" in dwi.prefix else "run")
                     + "_wf")
    inputnode = pe.Node(niu.IdentityInterface(["t1w_brain", "t1w_chain", "t1w_template"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(["figures", "titles", "captions"]), name="outputnode")
    threads, g = settings.threads, grid.to_dict()

    b0ref = pe.Node(B0Reference(in_dwi=str(dwi.dwi), in_bval=str(dwi.bval), threshold=settings.b0_threshold),
                    name="b0_reference")
    mask = pe.Node(BrainMask(), name="brain_mask")
    init = "identity" if _same_session(run) else "center_of_mass"
    register = pe.Node(RegisterB0(grid=g, threads=threads, seed=settings.seed, init=init), name="register",
                       n_procs=threads)
    xfm = pe.Node(WriteTransforms(threads=threads), name="transforms")
    resample_dwi = pe.Node(Resample(in_file=str(dwi.dwi), grid=g, threads=threads), name="resample_dwi",
                           n_procs=threads)
    resample_b0 = pe.Node(Resample(grid=g, threads=threads), name="resample_b0")
    resample_mask = pe.Node(Resample(grid=g, mask=True, threads=threads), name="resample_mask")
    gradients = pe.Node(ReorientGradients(in_bval=str(dwi.bval), in_bvec=str(dwi.bvec), source_image=str(dwi.dwi)),
                        name="reorient_gradients")
    wf.connect([
        (b0ref, mask, [("out_file", "in_file")]),
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
    ])
    if with_t1w:
        wf.connect([(inputnode, register, [("t1w_brain", "t1w_brain"), ("t1w_chain", "t1w_chain")])])

    # derivatives
    space = {"space": grid.name, "res": grid.res_label}
    sources = [bids_uri(p, settings.bids_dir) for p in (dwi.dwi, dwi.bval, dwi.bvec)]
    spatial = space_metadata(grid.name, grid.resolution_mm, grid.t1w)
    path = "b0 -> T1w (rigid), T1w -> template (affine + SyN)" if with_t1w else "b0 -> template (affine + SyN)"
    if with_t1w:
        sources.append(bids_uri(dwi.t1w, settings.bids_dir))
    dwi_meta = resampled_sidecar(dwi.sidecar, {
        "SkullStripped": False,
        "Sources": sources,
        **spatial,
        "Description": f"All volumes resampled once into {grid.name} at {grid.resolution_mm:g} mm ({path}); "
                       "b-vectors rotated by the linear part and given in the FSL convention of this image.",
    })

    def sink(name, suffix, extension, entities, metadata=None):
        node = pe.Node(DerivativesSink(source_file=str(dwi.dwi), output_dir=str(settings.output_dir), suffix=suffix,
                                       extension=extension, entities=entities, metadata=metadata or {}),
                       name=name, run_without_submitting=True)
        return node

    ds_dwi = sink("ds_dwi", "dwi", ".nii.gz", {**space, "desc": "preproc"}, dwi_meta)
    ds_bval = sink("ds_bval", "dwi", ".bval", {**space, "desc": "preproc"})
    ds_bvec = sink("ds_bvec", "dwi", ".bvec", {**space, "desc": "preproc"})
    ds_ref = sink("ds_dwiref", "dwiref", ".nii.gz", space,
                  {"SkullStripped": False, "Sources": sources[:2], **spatial,
                   "Description": f"Mean of the volumes with b <= {settings.b0_threshold:g} s/mm^2"})
    ds_mask = sink("ds_mask", "mask", ".nii.gz", {**space, "desc": "brain"},
                   {"Type": "Brain", "Sources": sources[:2], **spatial})
    ds_fwd = sink("ds_xfm_forward", "xfm", ".h5", {"from": "dwi", "to": grid.name, "mode": "image"},
                  {"Sources": sources[:1], "Description": path})
    ds_inv = sink("ds_xfm_inverse", "xfm", ".h5", {"from": grid.name, "to": "dwi", "mode": "image"},
                  {"Sources": sources[:1], "Description": f"inverse of: {path}"})
    wf.connect([
        (resample_dwi, ds_dwi, [("out_file", "in_file")]),
        (gradients, ds_bval, [("out_bval", "in_file")]),
        (gradients, ds_bvec, [("out_bvec", "in_file")]),
        (resample_b0, ds_ref, [("out_file", "in_file")]),
        (resample_mask, ds_mask, [("out_file", "in_file")]),
        (xfm, ds_fwd, [("forward", "in_file")]),
        (xfm, ds_inv, [("inverse", "in_file")]),
    ])

    figures = pe.Node(RegistrationFigures(run_name=dwi.prefix, grid=g, path=path), name="figures")
    wf.connect([
        (b0ref, figures, [("out_file", "b0_native")]),
        (mask, figures, [("out_file", "mask_native")]),
        (resample_b0, figures, [("out_file", "b0_template")]),
        (figures, outputnode, [("figures", "figures"), ("titles", "titles"), ("captions", "captions")]),
    ])
    if with_t1w:
        wf.connect([(inputnode, figures, [("t1w_template", "t1w_template")])])
    return wf


def init_participant_wf(subject: str, runs: list[CheckedRun], grid: TemplateGrid, settings: PrepareSettings):
    """All DWI runs of one subject (every session), and its report ``output_dir/sub-<subject>.html``.

    Each distinct T1w is registered to the template once and shared by the runs paired with it.
    """
    wf = pe.Workflow(name=f"sub_{_identifier(subject)}_wf")
    t1w_wfs = {}
    for t1w in sorted({r.run.t1w for r in runs if r.run.t1w is not None}):
        label = _identifier(t1w.name.split(".")[0].split("_", 1)[1]) if "_" in t1w.name else "t1w"
        t1w_wfs[t1w] = init_t1w_wf(t1w, grid, settings, name=f"anat_{label}_wf")
    merge = {key: pe.Node(niu.Merge(len(runs), no_flatten=True), name=f"merge_{key}") for key in ("figures", "titles", "captions")}
    notes = [f"Template {grid.name} at {grid.resolution_mm:g} mm, grid {grid.shape}."]
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


def run_participant(config, checked: list[CheckedRun]) -> None:
    """Prepare every checked run; ``config`` is the run's configuration (``cli.config.RunConfig``).

    The template is resolved before any workflow is built, so a template missing offline fails at once.
    """
    from ..prep.templates import load_template

    grid = load_template(config.template, config.output_resolution)
    LOGGER.info("template %s at %g mm: grid %s (from %g mm files in %s)", grid.name, grid.resolution_mm,
                grid.shape, grid.source_resolution_mm, grid.home)
    init_output_dir(config.output_dir, config.bids_dir)
    settings = PrepareSettings(config.bids_dir, config.output_dir, config.omp_nthreads, config.seed,
                               config.b0_threshold)
    wf = pe.Workflow(name="bids_phydiff_prepare_wf")
    subjects = sorted({r.run.subject for r in checked})
    for subject in subjects:
        wf.add_nodes([init_participant_wf(subject, [r for r in checked if r.run.subject == subject], grid, settings)])
    LOGGER.info("preparing %d run(s) of %d subject(s)", len(checked), len(subjects))
    run_workflow(wf, config.work_dir, config.output_dir / "logs" / "crash", config.nprocs, config.mem_gb,
                 config.plugin or None, config.stop_on_first_crash)
    for subject in subjects:
        LOGGER.info("report: %s", config.output_dir / f"sub-{subject}.html")
