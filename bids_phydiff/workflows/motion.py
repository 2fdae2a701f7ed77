"""Head-motion correction in the prepare workflow: the Nipype interfaces over :mod:`..prep.hmc` and
:mod:`..prep.motion`, and the report's motion figure.

One node corrects all volumes of a run (``n_procs`` = the ITK threads): on 2 cores, two 1-thread nodes
over halves of the series were no faster than one 2-thread node, and each extra process pays 3-5 s to
import antspyx.
"""

from __future__ import annotations

import logging
import os

from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, traits

LOGGER = logging.getLogger("bids_phydiff.hmc")


class _EstimateMotionInput(BaseInterfaceInputSpec):
    in_dwi = File(exists=True, mandatory=True, desc="4D DWI series")
    in_bval = File(exists=True, mandatory=True)
    mask = File(exists=True, mandatory=True, desc="brain mask on the DWI grid")
    b0_threshold = traits.Float(50.0, usedefault=True, desc="s/mm^2")
    fd_threshold = traits.Float(1.0, usedefault=True, desc="mm; volumes above it are listed")
    threads = traits.Int(1, usedefault=True)
    seed = traits.Int(0, usedefault=True)


class _EstimateMotionOutput(TraitedSpec):
    transforms = traits.List(File(exists=True), desc="per volume: b0-reference points -> volume points (.mat)")
    b0_reference = File(exists=True, desc="mean of the motion-corrected b0 volumes (the frame of the transforms)")
    confounds = File(exists=True, desc="TSV: trans_x..rot_z, framewise_displacement")
    confounds_meta = File(exists=True, desc="its JSON sidecar")
    above_threshold = traits.List(traits.Int, desc="volumes with FD above the threshold")


class EstimateMotion(SimpleInterface):
    """Per-volume rigid head-motion correction (:func:`prep.hmc.estimate_motion`) and the confounds table."""

    input_spec = _EstimateMotionInput
    output_spec = _EstimateMotionOutput

    def _run_interface(self, runtime):
        from ..prep.hmc import DEFAULT_HMC, describe, estimate_motion
        from ..prep.motion import confounds_sidecar, write_confounds, write_json

        i = self.inputs
        found = estimate_motion(i.in_dwi, i.in_bval, i.mask, runtime.cwd, i.threads, i.seed, i.b0_threshold)
        method = describe(DEFAULT_HMC)
        sidecar = confounds_sidecar(i.fd_threshold, found.parameters, method)
        name = os.path.basename(i.in_dwi)
        if sidecar["VolumesAboveThreshold"]:
            LOGGER.warning("%s: framewise displacement above %g mm in volume(s) %s (max %.2f mm); kept, listed in "
                           "the confounds sidecar", name, i.fd_threshold, sidecar["VolumesAboveThreshold"],
                           sidecar["MaxFramewiseDisplacement"])
        LOGGER.info("%s: mean FD %.3f mm, max %.3f mm", name, sidecar["MeanFramewiseDisplacement"],
                    sidecar["MaxFramewiseDisplacement"])
        self._results.update(
            transforms=[str(p) for p in found.transforms], b0_reference=str(found.b0_reference),
            confounds=str(write_confounds(found.parameters, os.path.join(runtime.cwd, "confounds.tsv"))),
            confounds_meta=str(write_json(sidecar, os.path.join(runtime.cwd, "confounds.json"))),
            above_threshold=sidecar["VolumesAboveThreshold"])
        return runtime


class _MotionFigureInput(BaseInterfaceInputSpec):
    run_name = traits.Str(mandatory=True)
    confounds = File(exists=True, mandatory=True)
    fd_threshold = traits.Float(1.0, usedefault=True)


class _FigureListOutput(TraitedSpec):
    figures = traits.List(File(exists=True))
    titles = traits.List(traits.Str)
    captions = traits.List(traits.Str)


class MotionFigure(SimpleInterface):
    """The motion trace of a run (:func:`reports.figures.plot_motion`) with its mean and max FD."""

    input_spec = _MotionFigureInput
    output_spec = _FigureListOutput

    def _run_interface(self, runtime):
        from ..prep.motion import FD_COLUMN, parameters_of, read_confounds
        from ..reports.figures import plot_motion

        i = self.inputs
        columns = read_confounds(i.confounds)
        fd = columns[FD_COLUMN]
        out = os.path.join(runtime.cwd, f"{i.run_name}_desc-motion_dwi.svg")
        plot_motion(parameters_of(columns), fd, i.fd_threshold, out, title=f"{i.run_name}: head motion")
        above = [int(v) for v, value in enumerate(fd) if value > i.fd_threshold]
        caption = (f"Head motion per volume relative to the b0 reference, as corrected. Framewise displacement: "
                   f"mean {fd.mean():.2f} mm, max {fd.max():.2f} mm; "
                   + (f"volumes above {i.fd_threshold:g} mm: {above} (kept)." if above
                      else f"no volume above {i.fd_threshold:g} mm."))
        self._results.update(figures=[out], titles=[f"{i.run_name}: head motion"], captions=[caption])
        return runtime
