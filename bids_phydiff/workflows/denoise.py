"""Denoising in the prepare workflow (``--denoise``): the Nipype interface over :mod:`..prep.denoise`."""

from __future__ import annotations

import os

from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, traits


class _DenoiseInput(BaseInterfaceInputSpec):
    in_dwi = File(exists=True, mandatory=True, desc="4D DWI series")
    in_bval = File(exists=True, mandatory=True)
    method = traits.Enum("mppca", "patch2self", mandatory=True, desc="dipy denoising method")
    b0_threshold = traits.Float(50.0, usedefault=True, desc="s/mm^2")


class _DenoiseOutput(TraitedSpec):
    out_file = File(exists=True, desc="the denoised series, same grid, float32")


class Denoise(SimpleInterface):
    """The whole series denoised with dipy (:func:`prep.denoise.write_denoised`)."""

    input_spec = _DenoiseInput
    output_spec = _DenoiseOutput

    def _run_interface(self, runtime):
        from ..prep.denoise import write_denoised

        i = self.inputs
        out = write_denoised(i.in_dwi, i.in_bval, os.path.join(runtime.cwd, "denoised.nii.gz"), i.method,
                             i.b0_threshold, tmp_dir=runtime.cwd)
        self._results["out_file"] = str(out)
        return runtime
