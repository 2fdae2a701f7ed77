"""Thin Nipype interfaces: each node calls one function of prep/ (or writes a derivative) and passes paths.

Interfaces hold no maths. Inputs and outputs are files, so Nipype can cache every node in the work dir.
"""

from __future__ import annotations

import os
from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)


def _out(runtime, name: str) -> str:
    """A path in the node's own working directory."""
    return os.path.join(runtime.cwd, name)


class _DerivativesSinkInput(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="file to store")
    source_file = traits.Str(mandatory=True, desc="the input file this derives from (gives the entities)")
    source_entities = traits.Dict(desc="the source's entities in file order ({'sub': '01', ...}), used instead "
                                  "of those of source_file's name")
    output_dir = traits.Str(mandatory=True, desc="derivatives root")
    suffix = traits.Str(mandatory=True)
    extension = traits.Str(mandatory=True, desc="e.g. .nii.gz, .bval, .h5")
    entities = traits.Dict(desc="entities to add or override (space, res, desc, from, to, mode)")
    metadata = traits.Dict(desc="JSON sidecar content; written beside the file when not empty")


class _DerivativesSinkOutput(TraitedSpec):
    out_file = File(desc="the stored file")
    out_meta = File(desc="its JSON sidecar")


class DerivativesSink(SimpleInterface):
    """Store a file under its BIDS derivative name, atomically (temporary name, then rename)."""

    input_spec = _DerivativesSinkInput
    output_spec = _DerivativesSinkOutput
    always_run = True  # cheap, and the target may have been removed since the last run

    def _run_interface(self, runtime):
        from ..bids.derivatives import copy_file, derivative_path, write_json

        entities = {("from_" if k == "from" else k): v for k, v in self.inputs.entities.items()}
        given = self.inputs.source_entities
        source = dict(given) if isdefined(given) and given else self.inputs.source_file
        target = derivative_path(Path(self.inputs.output_dir), source, self.inputs.suffix,
                                 self.inputs.extension, **entities)
        copy_file(Path(self.inputs.in_file), target)
        self._results["out_file"] = str(target)
        if self.inputs.metadata:
            meta = target.with_name(target.name[: -len(self.inputs.extension)] + ".json")
            write_json(meta, dict(self.inputs.metadata))
            self._results["out_meta"] = str(meta)
        return runtime


# --- prepare: one interface per prep/ function ------------------------------------------------------------

class _ThreadsSeedInput(BaseInterfaceInputSpec):
    threads = traits.Int(1, usedefault=True, desc="ITK threads for this step")
    seed = traits.Int(0, usedefault=True, desc="ANTs random seed")


class _B0ReferenceInput(BaseInterfaceInputSpec):
    in_dwi = File(exists=True, mandatory=True, desc="4D DWI series")
    in_bval = File(exists=True, mandatory=True)
    threshold = traits.Float(50.0, usedefault=True, desc="b0 threshold, s/mm^2")


class _OutFile(TraitedSpec):
    out_file = File(exists=True)


class B0Reference(SimpleInterface):
    """Mean of the volumes with b <= threshold (:func:`prep.b0.write_b0_reference`)."""

    input_spec = _B0ReferenceInput
    output_spec = _OutFile

    def _run_interface(self, runtime):
        from ..prep.b0 import write_b0_reference

        out = write_b0_reference(self.inputs.in_dwi, self.inputs.in_bval, _out(runtime, "b0ref.nii.gz"),
                                 self.inputs.threshold)
        self._results["out_file"] = str(out)
        return runtime


class _InFile(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True)


class BrainMask(SimpleInterface):
    """Brain mask of a b0 reference (:func:`prep.mask.write_brain_mask`)."""

    input_spec = _InFile
    output_spec = _OutFile

    def _run_interface(self, runtime):
        from ..prep.mask import write_brain_mask

        self._results["out_file"] = str(write_brain_mask(self.inputs.in_file, _out(runtime, "brain_mask.nii.gz")))
        return runtime


class _ChainOutput(TraitedSpec):
    out_chain = File(exists=True, desc="JSON of a TransformChain (ANTs files in this node's folder)")


def _write_chain(runtime, chain) -> str:
    import json

    path = _out(runtime, "chain.json")
    Path(path).write_text(json.dumps(chain.to_dict(), indent=1))
    return path


def _read_chain(path: str):
    import json

    from ..prep.transforms import TransformChain

    return TransformChain.from_dict(json.loads(Path(path).read_text()))


def _grid(data: dict):
    from ..prep.templates import TemplateGrid

    return TemplateGrid.from_dict(data)


class _T1wToTemplateInput(_ThreadsSeedInput):
    t1w = File(exists=True, mandatory=True)
    grid = traits.Dict(mandatory=True, desc="TemplateGrid.to_dict()")


class _T1wToTemplateOutput(_ChainOutput):
    brain = File(exists=True, desc="T1w times the brain mask")
    brain_mask = File(exists=True, desc="the template brain mask on the T1w grid")


class RegisterT1wToTemplate(SimpleInterface):
    """T1w -> template (affine + SyN), then the T1w brain through the inverse (:mod:`prep.registration`)."""

    input_spec = _T1wToTemplateInput
    output_spec = _T1wToTemplateOutput

    def _run_interface(self, runtime):
        from ..prep.registration import register_t1w_to_template, t1w_brain

        grid = _grid(self.inputs.grid)
        reg = register_t1w_to_template(self.inputs.t1w, grid, runtime.cwd, self.inputs.threads, self.inputs.seed)
        brain, mask = t1w_brain(self.inputs.t1w, reg, grid, runtime.cwd, self.inputs.threads)
        self._results.update(out_chain=_write_chain(runtime, reg.chain), brain=str(brain), brain_mask=str(mask))
        return runtime


class _B0RegistrationInput(_ThreadsSeedInput):
    b0 = File(exists=True, mandatory=True, desc="b0 reference")
    b0_mask = File(exists=True, mandatory=True)
    t1w_brain = File(exists=True, desc="brain-extracted T1w; without it the b0 goes straight to the template")
    t1w_chain = File(exists=True, desc="T1w -> template chain (with t1w_brain)")
    grid = traits.Dict(mandatory=True)
    init = traits.Enum("identity", "center_of_mass", usedefault=True,
                       desc="b0 -> T1w start: scanner coordinates, or centres of mass (T1w of another session)")


class _B0RegistrationOutput(_ChainOutput):
    path = traits.Str(desc="which registration path was taken")


class RegisterB0(SimpleInterface):
    """The DWI -> template chain: b0 -> T1w rigid then T1w -> template, or b0 -> template directly."""

    input_spec = _B0RegistrationInput
    output_spec = _B0RegistrationOutput

    def _run_interface(self, runtime):
        from ..prep.registration import register_b0_to_t1w, register_b0_to_template

        i = self.inputs
        if isdefined(i.t1w_brain):
            to_t1w = register_b0_to_t1w(i.b0, i.b0_mask, i.t1w_brain, runtime.cwd, i.threads, i.seed, init=i.init)
            chain = to_t1w.chain.then(_read_chain(i.t1w_chain))
            self._results["path"] = "b0 -> T1w (rigid), T1w -> template (affine + SyN)"
        else:
            chain = register_b0_to_template(i.b0, i.b0_mask, _grid(i.grid), runtime.cwd, i.threads, i.seed).chain
            self._results["path"] = "b0 -> template (affine + SyN), no T1w"
        self._results["out_chain"] = _write_chain(runtime, chain)
        return runtime


class _WriteTransformsInput(BaseInterfaceInputSpec):
    in_chain = File(exists=True, mandatory=True)
    threads = traits.Int(1, usedefault=True)


class _WriteTransformsOutput(TraitedSpec):
    forward = File(exists=True, desc="composite .h5 resampling DWI-space images onto the template")
    inverse = File(exists=True, desc="composite .h5 resampling template-space images onto the DWI grid")


class WriteTransforms(SimpleInterface):
    """A chain as two composite ``.h5`` transforms (:func:`prep.resample.write_transforms`)."""

    input_spec = _WriteTransformsInput
    output_spec = _WriteTransformsOutput

    def _run_interface(self, runtime):
        from ..prep.resample import write_transforms

        fwd, inv = write_transforms(_read_chain(self.inputs.in_chain), _out(runtime, "forward.h5"),
                                    _out(runtime, "inverse.h5"), runtime.cwd, self.inputs.threads)
        self._results.update(forward=str(fwd), inverse=str(inv))
        return runtime


class _ResampleInput(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="3D or 4D image")
    transform = File(exists=True, mandatory=True, desc="composite .h5 (fixed points -> moving points)")
    grid = traits.Dict(desc="TemplateGrid.to_dict() of the target grid")
    reference = File(exists=True, desc="an image defining the target grid (instead of grid)")
    mask = traits.Bool(False, usedefault=True, desc="binary mask: linear, then >= 0.5")
    interpolation = traits.Str("linear", usedefault=True)
    threads = traits.Int(1, usedefault=True)
    volume_transforms = traits.List(File(exists=True), desc="per volume, acting last (head-motion correction)")


class Resample(SimpleInterface):
    """One interpolation of every volume through a composite transform (:mod:`prep.resample`)."""

    input_spec = _ResampleInput
    output_spec = _OutFile

    def _run_interface(self, runtime):
        from ..prep.resample import resample_mask, resample_series

        i = self.inputs
        reference = _grid(i.grid) if isdefined(i.grid) else i.reference
        out = _out(runtime, "resampled.nii.gz")
        if i.mask:
            resample_mask(i.in_file, i.transform, reference, out, runtime.cwd, i.threads)
        else:
            extra = i.volume_transforms if isdefined(i.volume_transforms) else None
            resample_series(i.in_file, i.transform, reference, out, runtime.cwd, i.threads, i.interpolation,
                            volume_transforms=extra)
        self._results["out_file"] = out
        return runtime


class _ReorientInput(BaseInterfaceInputSpec):
    in_bval = File(exists=True, mandatory=True)
    in_bvec = File(exists=True, mandatory=True)
    source_image = File(exists=True, mandatory=True, desc="the image the bvecs belong to")
    target_image = File(exists=True, mandatory=True, desc="the resampled image the new bvecs go beside")
    transform = File(exists=True, mandatory=True, desc="composite .h5 that resampled source onto target")
    volume_transforms = traits.List(File(exists=True), desc="per volume, acting last (head-motion correction)")


class _ReorientOutput(TraitedSpec):
    out_bval = File(exists=True)
    out_bvec = File(exists=True)


class ReorientGradients(SimpleInterface):
    """b-vectors rotated by the linear part of the transform, in the target's FSL convention."""

    input_spec = _ReorientInput
    output_spec = _ReorientOutput

    def _run_interface(self, runtime):
        from ..prep.gradients import write_reoriented_fsl

        i = self.inputs
        bval, bvec = write_reoriented_fsl(i.in_bval, i.in_bvec, i.source_image, i.target_image,
                                          _out(runtime, "dwi.bval"), _out(runtime, "dwi.bvec"), [i.transform],
                                          volume_transforms=i.volume_transforms if isdefined(i.volume_transforms)
                                          else None)
        self._results.update(out_bval=str(bval), out_bvec=str(bvec))
        return runtime


# --- reports ----------------------------------------------------------------------------------------------

class _RegistrationFiguresInput(BaseInterfaceInputSpec):
    run_name = traits.Str(mandatory=True, desc="the run's source name, e.g. sub-01_acq-ax30; names the figures")
    b0_native = File(exists=True, mandatory=True)
    mask_native = File(exists=True, mandatory=True)
    b0_template = File(exists=True, mandatory=True, desc="b0 reference resampled into the template")
    t1w_template = File(exists=True, desc="the T1w resampled into the template (when there is one)")
    grid = traits.Dict(mandatory=True)
    path = traits.Str("", usedefault=True, desc="the registration path, for the caption")


class _FiguresOutput(TraitedSpec):
    figures = traits.List(File(exists=True))
    titles = traits.List(traits.Str)
    captions = traits.List(traits.Str)


class RegistrationFigures(SimpleInterface):
    """The figures a person checks a registration with: b0 over the template outline, the brain mask, and
    the T1w over the template outline."""

    input_spec = _RegistrationFiguresInput
    output_spec = _FiguresOutput

    def _run_interface(self, runtime):
        import nibabel as nib
        import numpy as np

        from ..reports.figures import plot_overlay

        i = self.inputs
        grid = _grid(i.grid)
        outline = np.asarray(nib.load(str(grid.mask)).dataobj, dtype=np.float32)
        if outline.shape != tuple(grid.shape):  # template files on their own (finer) grid
            from ..prep.grid import resample_to_grid

            outline = resample_to_grid(grid.mask, grid, is_mask=True).astype(np.float32)
        data = lambda path: np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)  # noqa: E731
        figures, titles, captions = [], [], []
        figures.append(plot_overlay(data(i.b0_template), _out(runtime, f"{i.run_name}_desc-b0reg_dwi.png"),
                                    contour=outline, title=f"{i.run_name}: b0 in {grid.name}"))
        titles.append(f"{i.run_name}: b0 reference in {grid.name} space")
        captions.append(f"The b0 reference after registration ({i.path}); the line is the template's brain "
                        "outline. It should follow the edge of the brain everywhere.")
        figures.append(plot_overlay(data(i.b0_native), _out(runtime, f"{i.run_name}_desc-brainmask_dwi.png"),
                                    mask=data(i.mask_native), title=f"{i.run_name}: brain mask"))
        titles.append(f"{i.run_name}: brain mask")
        captions.append("The brain mask (filled) on the native b0 reference. It should cover the whole brain and "
                        "little else.")
        if isdefined(i.t1w_template):
            figures.append(plot_overlay(data(i.t1w_template), _out(runtime, f"{i.run_name}_desc-t1wreg_T1w.png"),
                                        contour=outline, title=f"{i.run_name}: T1w in {grid.name}"))
            titles.append(f"{i.run_name}: T1w in {grid.name} space")
            captions.append("The subject's T1w after its nonlinear registration, with the template's brain outline.")
        self._results.update(figures=[str(f) for f in figures], titles=titles, captions=captions)
        return runtime


class _SubjectReportInput(BaseInterfaceInputSpec):
    subject = traits.Str(mandatory=True)
    output_dir = traits.Str(mandatory=True)
    figures = traits.List(traits.List(File(exists=True)), mandatory=True, desc="per run")
    titles = traits.List(traits.List(traits.Str), mandatory=True)
    captions = traits.List(traits.List(traits.Str), mandatory=True)
    notes = traits.List(traits.Str)


class _SubjectReportOutput(TraitedSpec):
    out_report = File(exists=True)


class SubjectReport(SimpleInterface):
    """``output_dir/sub-X.html`` with its figures copied to ``output_dir/sub-X/figures/``."""

    input_spec = _SubjectReportInput
    output_spec = _SubjectReportOutput
    always_run = True

    def _run_interface(self, runtime):
        from ..bids.derivatives import copy_file
        from ..reports.html import Section, write_report

        i = self.inputs
        root = Path(i.output_dir)
        sections = []
        for figures, titles, captions in zip(i.figures, i.titles, i.captions):
            for figure, title, caption in zip(figures, titles, captions):
                target = copy_file(Path(figure), root / f"sub-{i.subject}" / "figures" / Path(figure).name)
                sections.append(Section(title, target, caption))
        notes = list(i.notes) if isdefined(i.notes) else []
        self._results["out_report"] = str(write_report(root / f"sub-{i.subject}.html", i.subject, sections, notes))
        return runtime
