"""The prepared runs of an output folder: one type for the files of a run, one way to find them.

The participant level writes, per DWI run (DESIGN.md section 5)::

    sub-X/[ses-Y/]dwi/<prefix>_space-<tpl>[_res-<r>]_desc-preproc_dwi.nii.gz  (+ .bval, .bvec, .json)
    sub-X/[ses-Y/]dwi/<prefix>_space-<tpl>[_res-<r>]_desc-brain_mask.nii.gz
    sub-X/[ses-Y/]dwi/<prefix>_space-<tpl>[_res-<r>]_dwiref.nii.gz
    sub-X/[ses-Y/]dwi/<prefix>_from-dwi_to-<tpl>_mode-image_xfm.h5  (and from-<tpl>_to-dwi, the inverse)

where ``<prefix>`` is ``sub-X[_ses-Y][_acq-..][_dir-..][_run-..]``. :class:`PreparedRun` holds those paths
(the training, synthesis and evaluation rooms read them as plain paths); :func:`find_prepared` globs the
names. No pybids index: the names are our own, a glob reads them in milliseconds, and several jobs of a
cluster array can look at one output folder at the same time without sharing a database.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import NoInputError
from .derivatives import derivative_name, derivative_path
from .layout import DwiRun, filename_entities

__all__ = ["PreparedRun", "find_prepared"]

PREPROC_GLOB = "*_desc-preproc_dwi.nii.gz"


@dataclass(frozen=True)
class PreparedRun:
    """The prepare-stage files of one DWI run on a template grid.

    ``dwi`` ``(X, Y, Z, N)`` signal units with ``bval`` (s/mm^2) and ``bvec`` (FSL convention of the image
    axes); ``mask`` the brain mask and ``b0ref`` the b0 reference, both ``(X, Y, Z)`` on the same grid;
    ``forward``/``inverse`` the DWI <-> template composite transforms (``.h5``). ``subject`` is the label
    without ``sub-``, ``prefix`` the source entities (``sub-03_ses-1``), ``space``/``res`` the template and
    its res- label (None for files made outside the participant level, e.g. the phantom helper's).
    """

    subject: str
    dwi: Path
    bval: Path
    bvec: Path
    mask: Path
    b0ref: Path
    forward: Path | None = None
    inverse: Path | None = None
    prefix: str = ""
    space: str | None = None
    res: str | None = None

    @classmethod
    def beside(cls, dwi: str | Path) -> "PreparedRun":
        """The files that belong with ``<prefix>_space-<tpl>[_res-<r>]_desc-preproc_dwi.nii.gz``."""
        dwi = Path(dwi)
        entities = dict(filename_entities(dwi))  # parsed once; every sibling is named from it
        space, res = entities["space"], entities.get("res")
        grid = {"space": space, "res": res}
        xfm = {"space": None, "res": None, "desc": None, "mode": "image"}
        stem = dwi.name[: -len(".nii.gz")]
        source = {k: v for k, v in entities.items() if k not in ("space", "res", "desc")}
        return cls(
            subject=entities["sub"],
            dwi=dwi,
            bval=dwi.with_name(f"{stem}.bval"),
            bvec=dwi.with_name(f"{stem}.bvec"),
            mask=dwi.with_name(derivative_name(entities, "mask", ".nii.gz", **grid, desc="brain")),
            b0ref=dwi.with_name(derivative_name(entities, "dwiref", ".nii.gz", **grid, desc=None)),
            forward=dwi.with_name(derivative_name(entities, "xfm", ".h5", **xfm, from_="dwi", to=space)),
            inverse=dwi.with_name(derivative_name(entities, "xfm", ".h5", **xfm, from_=space, to="dwi")),
            prefix="_".join(f"{k}-{v}" for k, v in source.items()),
            space=space,
            res=res,
        )

    @classmethod
    def of_run(cls, output_dir: Path, run: DwiRun, template: str, res_label: str | None) -> "PreparedRun":
        """Where the prepare stage writes ``run`` on ``template`` at ``res_label``."""
        return cls.beside(derivative_path(output_dir, run, "dwi", ".nii.gz", space=template, res=res_label,
                                          desc="preproc"))

    @property
    def sidecar(self) -> Path:
        """The ``.json`` beside the prepared DWI."""
        return self.dwi.with_name(self.dwi.name[: -len(".nii.gz")] + ".json")

    @property
    def arrays(self) -> tuple[Path, ...]:
        """The files every consumer reads: DWI, gradients, mask, b0 reference."""
        return (self.dwi, self.bval, self.bvec, self.mask, self.b0ref)

    def missing(self) -> list[Path]:
        """The files of this run (transforms included, when named) that do not exist."""
        files = self.arrays + tuple(p for p in (self.forward, self.inverse) if p is not None)
        return [p for p in files if not p.is_file()]


def find_prepared(output_dir: str | Path, subjects: tuple[str, ...] | list[str] = (), space: str | None = None,
                  res: str | None = None) -> list[PreparedRun]:
    """Every prepared run of ``subjects`` (labels with or without ``sub-``; empty = all) in ``output_dir``,
    optionally only in template ``space`` at res label ``res``; sorted by subject and file name.

    Raises :class:`NoInputError` (exit 66) when ``output_dir`` does not exist, when a requested subject has
    no prepared run, when there is none at all (each naming the pattern looked for), or when a run lacks its
    gradients, mask or b0 reference.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise NoInputError(f"{output_dir}: output folder not found")
    labels = [str(s).removeprefix("sub-") for s in subjects]
    folders = [output_dir / f"sub-{s}" for s in labels] if labels else sorted(output_dir.glob("sub-*"))
    want = f"*_space-{space or '<tpl>'}" + (f"_res-{res}" if res else "") + "_desc-preproc_dwi.nii.gz"
    hint = "run the participant level first with the same --template and --output-resolution"
    runs: list[PreparedRun] = []
    for folder in folders:
        found = []
        for dwi in sorted(folder.glob(f"**/dwi/{PREPROC_GLOB}")):
            entities = dict(filename_entities(dwi))
            if "space" not in entities or (space and entities["space"] != space) or (res and entities.get("res") != res):
                continue
            found.append(PreparedRun.beside(dwi))
        if not found and labels:
            raise NoInputError(f"{folder}: no prepared run ({want}) for sub-{folder.name.removeprefix('sub-')}; {hint}")
        runs += found
    if not runs:
        raise NoInputError(f"{output_dir}: no prepared runs ({want}); {hint}")
    for run in runs:
        missing = [p.name for p in run.arrays if not p.is_file()]
        if missing:
            raise NoInputError(f"{run.dwi}: prepared run is incomplete, missing {missing}; rerun the participant level")
    return sorted(runs, key=lambda r: (r.subject, str(r.dwi)))
