"""The prepare stage's derivatives as a Nipype workflow (DESIGN.md section 5).

:func:`init_dwi_derivatives_wf` takes the files a DWI run's preparation produced and writes each under its
BIDS name with its sidecar, through :class:`~.interfaces.DerivativesSink` (atomic writes).
"""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..bids.checks import CheckedRun
from ..bids.derivatives import bids_uri, resampled_sidecar, space_metadata
from ..prep.templates import TemplateGrid
from .interfaces import DerivativesSink

DERIVATIVE_INPUTS = ["dwi", "bval", "bvec", "dwiref", "mask", "forward", "inverse", "confounds", "confounds_meta"]


def registration_path(with_t1w: bool, hmc: bool = False) -> str:
    """How a run reached the template, as its sidecars and report say."""
    path = "b0 -> T1w (rigid), T1w -> template (affine + SyN)" if with_t1w else "b0 -> template (affine + SyN)"
    return ("each volume -> b0 reference (rigid head-motion correction), " + path) if hmc else path


def init_dwi_derivatives_wf(run: CheckedRun, grid: TemplateGrid, bids_dir, output_dir, b0_threshold: float,
                            with_t1w: bool, name: str = "dwi_derivatives_wf", hmc: bool = False,
                            provenance: dict | None = None) -> pe.Workflow:
    """Write the prepare-stage derivatives of one DWI run.

    Parameters
    ----------
    run
        The checked input run (its raw files are the derivatives' ``Sources``).
    grid
        The template grid the run was resampled onto (``space-``/``res-`` entities, spatial metadata).
    bids_dir, output_dir
        The input dataset (for BIDS URIs) and the derivatives folder.
    b0_threshold
        s/mm^2; stated in the b0 reference's sidecar.
    with_t1w
        Whether the run was registered through its T1w (sidecars say which path, ``Sources`` list the T1w).
    hmc
        Whether head motion was corrected (then the confounds are written, as fMRIPrep and QSIPrep name
        them: ``<source entities>_desc-confounds_timeseries.tsv`` + ``.json``).
    provenance
        Added to the DWI sidecar: how the run was made (``InputType``, ``HeadMotionCorrection``,
        ``Denoising``). Outputs are named from the run's entities (for a preprocessed input, without its
        ``space``/``res``/``desc``).

    Inputs
    ------
    dwi, bval, bvec
        The resampled series and its rotated gradients (FSL convention of the output image).
    dwiref, mask
        The b0 reference and brain mask on the template grid.
    forward, inverse
        The DWI -> template composite transform and its inverse (``.h5``; with ``hmc``: of the b0 reference).
    confounds, confounds_meta
        The motion confounds TSV and its JSON sidecar (only ``hmc``).

    Outputs
    -------
    None: files under ``output_dir/sub-X/[ses-Y/]dwi/`` named as in DESIGN.md section 5.
    """
    dwi = run.run
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(DERIVATIVE_INPUTS), name="inputnode")
    space = {"space": grid.name, "res": grid.res_label}
    sources = [bids_uri(p, bids_dir) for p in (dwi.dwi, dwi.bval, dwi.bvec)]
    if with_t1w:
        sources.append(bids_uri(dwi.t1w, bids_dir))
    mask_sources = [bids_uri(dwi.mask, bids_dir)] if dwi.mask is not None else sources[:2]
    spatial = space_metadata(grid.name, grid.resolution_mm, grid.t1w)
    path = registration_path(with_t1w)
    rotation = ("each b-vector rotated by the linear part of its own volume's chain" if hmc
                else "b-vectors rotated by the linear part")
    dwi_meta = resampled_sidecar(dwi.sidecar, {
        "SkullStripped": False,
        "Sources": sources,
        **spatial,
        **(provenance or {}),
        "Description": f"All volumes resampled once into {grid.name} at {grid.resolution_mm:g} mm "
                       f"({registration_path(with_t1w, hmc)}); {rotation} and given in the FSL convention of "
                       "this image.",
    })
    # (input field, node name, suffix, extension, entities, sidecar)
    sinks = [
        ("dwi", "ds_dwi", "dwi", ".nii.gz", {**space, "desc": "preproc"}, dwi_meta),
        ("bval", "ds_bval", "dwi", ".bval", {**space, "desc": "preproc"}, None),
        ("bvec", "ds_bvec", "dwi", ".bvec", {**space, "desc": "preproc"}, None),
        ("dwiref", "ds_dwiref", "dwiref", ".nii.gz", space,
         {"SkullStripped": False, "Sources": sources[:2], **spatial,
          "Description": f"Mean of the {'motion-corrected ' if hmc else ''}volumes with b <= {b0_threshold:g} "
                         "s/mm^2"}),
        ("mask", "ds_mask", "mask", ".nii.gz", {**space, "desc": "brain"},
         {"Type": "Brain", "Sources": mask_sources, **spatial}),
        ("forward", "ds_xfm_forward", "xfm", ".h5", {"from": "dwi", "to": grid.name, "mode": "image"},
         {"Sources": sources[:1], "Description": path}),
        ("inverse", "ds_xfm_inverse", "xfm", ".h5", {"from": grid.name, "to": "dwi", "mode": "image"},
         {"Sources": sources[:1], "Description": f"inverse of: {path}"}),
    ]
    if hmc:
        sinks += [("confounds", "ds_confounds", "timeseries", ".tsv", {"desc": "confounds"}, None),
                  ("confounds_meta", "ds_confounds_meta", "timeseries", ".json", {"desc": "confounds"}, None)]
    for field, node_name, suffix, extension, entities, metadata in sinks:
        node = pe.Node(DerivativesSink(source_file=str(dwi.dwi), source_entities=dict(dwi.entities),
                                       output_dir=str(output_dir), suffix=suffix,
                                       extension=extension, entities=entities, metadata=metadata or {}),
                       name=node_name, run_without_submitting=True)
        wf.connect(inputnode, field, node, "in_file")
    return wf
