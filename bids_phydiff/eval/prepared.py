"""Find the prepared (template-space) runs of subjects in an output folder, for evaluation.

The participant level writes, per DWI run (DESIGN.md section 5)::

    sub-X/[ses-Y/]dwi/<prefix>_space-<tpl>_res-<r>_desc-preproc_dwi.nii.gz  (+ .bval, .bvec, .json)
    sub-X/[ses-Y/]dwi/<prefix>_space-<tpl>_res-<r>_desc-brain_mask.nii.gz
    sub-X/[ses-Y/]dwi/<prefix>_space-<tpl>_res-<r>_dwiref.nii.gz
    sub-X/[ses-Y/]dwi/<prefix>_from-dwi_to-<tpl>_mode-image_xfm.h5

where ``<prefix>`` is ``sub-X[_ses-Y][_acq-..][_dir-..][_run-..]``. :func:`find_prepared` globs these names
(no database: the evaluation reads a handful of subjects) and returns one :class:`PreparedDwi` per run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..bids.derivatives import PreparedFiles
from ..errors import NoInputError

__all__ = ["PreparedDwi", "find_prepared"]

_NAME = re.compile(r"^(?P<prefix>sub-[^_]+(?:_[a-z]+-[^_]+)*?)_space-(?P<space>[^_]+)(?:_res-(?P<res>[^_]+))?"
                   r"_desc-preproc_dwi\.nii\.gz$")


@dataclass(frozen=True)
class PreparedDwi:
    """One prepared run: ``dwi`` (X, Y, Z, N) signal units with ``bval`` (s/mm^2) and ``bvec`` (FSL convention
    of the image axes), ``mask`` (brain, X, Y, Z), ``b0ref`` (X, Y, Z), and the DWI -> template transform
    ``forward_xfm`` (may be absent). ``prefix`` e.g. ``sub-03_ses-1``; ``space`` the template; ``res`` the
    res- label or None."""

    subject: str
    prefix: str
    space: str
    res: str | None
    dwi: Path
    bval: Path
    bvec: Path
    mask: Path
    b0ref: Path
    forward_xfm: Path

    @property
    def sidecar(self) -> Path:
        return self.dwi.with_name(self.dwi.name.replace(".nii.gz", ".json"))


def _run(dwi: Path) -> PreparedDwi | None:
    match = _NAME.match(dwi.name)
    if match is None:
        return None
    prefix, space, res = match["prefix"], match["space"], match["res"]
    files = PreparedFiles.beside(dwi)
    return PreparedDwi(
        subject=prefix.split("_")[0].removeprefix("sub-"),
        prefix=prefix,
        space=space,
        res=res,
        dwi=dwi,
        bval=files.bval,
        bvec=files.bvec,
        mask=files.mask,
        b0ref=files.b0ref,
        forward_xfm=files.forward,
    )


def find_prepared(output_dir: str | Path, subjects: tuple[str, ...] | list[str] = (), space: str | None = None,
                  res: str | None = None) -> list[PreparedDwi]:
    """Every prepared run of ``subjects`` (labels with or without ``sub-``; empty = all) in ``output_dir``,
    optionally only in template ``space`` at res label ``res``; sorted by subject and file name.

    Raises :class:`NoInputError` (exit 66) when ``output_dir`` does not exist, when a requested subject has
    no prepared run (naming the pattern looked for), or when a run lacks its gradients, mask or b0 reference.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise NoInputError(f"{output_dir}: output folder not found")
    labels = [str(s).removeprefix("sub-") for s in subjects]
    folders = [output_dir / f"sub-{s}" for s in labels] if labels else sorted(output_dir.glob("sub-*"))
    want = f"*_space-{space or '<tpl>'}" + (f"_res-{res}" if res else "") + "_desc-preproc_dwi.nii.gz"
    runs: list[PreparedDwi] = []
    for folder in folders:
        found = []
        for dwi in sorted(folder.glob("**/dwi/*_desc-preproc_dwi.nii.gz")):
            run = _run(dwi)
            if run is None or (space and run.space != space) or (res and run.res != res):
                continue
            found.append(run)
        if not found and labels:
            raise NoInputError(f"{folder}: no prepared run ({want}) for sub-{folder.name.removeprefix('sub-')}; "
                               "run the participant level on it first (with the bundle's template and resolution)")
        runs += found
    if not runs:
        raise NoInputError(f"{output_dir}: no prepared runs ({want}); run the participant level first")
    for run in runs:
        missing = [p.name for p in (run.bval, run.bvec, run.mask, run.b0ref) if not p.is_file()]
        if missing:
            raise NoInputError(f"{run.dwi}: prepared run is incomplete, missing {missing}")
    return runs
