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
    traits,
)


def _out(runtime, name: str) -> str:
    """A path in the node's own working directory."""
    return os.path.join(runtime.cwd, name)


class _DerivativesSinkInput(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="file to store")
    source_file = traits.Str(mandatory=True, desc="the input file this derives from (gives the entities)")
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
        target = derivative_path(Path(self.inputs.output_dir), self.inputs.source_file, self.inputs.suffix,
                                 self.inputs.extension, **entities)
        copy_file(Path(self.inputs.in_file), target)
        self._results["out_file"] = str(target)
        if self.inputs.metadata:
            meta = target.with_name(target.name[: -len(self.inputs.extension)] + ".json")
            write_json(meta, dict(self.inputs.metadata))
            self._results["out_meta"] = str(meta)
        return runtime
