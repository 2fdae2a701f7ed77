"""The phantom's noise-free reference and white-matter mask for a prepared run in template space.

A phantom dataset keeps its ground truth under ``<bids>/sourcedata/truth`` (:mod:`bids_phydiff.phantom.truth`):
one folder per subject on the subject's own DWI grid, and ``template/res-RR`` on the template grid.

- :func:`noise_free_prepared`: the subject's noise-free signal for its *acquired* gradients, computed on its
  own DWI grid from its truth, then resampled into template space through the *same* DWI -> template
  transform and interpolation (linear) the participant level used for the acquired data. Volume by volume it
  is what the prepared DWI would be without noise: the same registration, blurring and gradient rotation,
  so the difference to the prepared DWI is the Rician noise (and what interpolation does to it). The
  gradients of the prepared run (rotated b-vectors) go with it unchanged.
- :func:`template_white_matter`: the template truth's white-matter label (tissue 3) at the run's resolution.
  It is exact for the template; a registered subject is aligned with it up to the registration error.

The raw DWI that the truth belongs to is found from the ``Sources`` of the prepared run's sidecar
(``bids:raw:sub-X/dwi/..._dwi.bvec``), relative to the BIDS root that holds ``sourcedata/truth``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

from ..bids.prepared import PreparedRun
from ..errors import InputDataError, NoInputError
from ..phantom.truth import read_truth
from ..prep.grid import same_grid

__all__ = ["noise_free_prepared", "template_white_matter", "truth_root"]

WM_LABEL = 3


def truth_root(truth_dir: str | Path) -> Path:
    """``truth_dir`` checked to be a phantom truth folder (with ``template/``); NoInputError (66) if not."""
    truth_dir = Path(truth_dir)
    if not truth_dir.is_dir():
        raise NoInputError(f"--truth-dir {truth_dir}: folder not found")
    if not (truth_dir / "template").is_dir():
        raise NoInputError(f"--truth-dir {truth_dir}: not a phantom truth folder (no template/ inside; "
                           "give <phantom>/sourcedata/truth)")
    return truth_dir


def _raw_source(run: PreparedRun, truth_dir: Path, suffix: str) -> Path:
    bids_root = truth_dir.parent.parent
    sources = []
    if run.sidecar.is_file():
        sources = json.loads(run.sidecar.read_text()).get("Sources", [])
    for source in sources:
        if source.startswith("bids:raw:") and source.endswith(suffix):
            path = bids_root / source.removeprefix("bids:raw:")
            if path.is_file():
                return path
    raise NoInputError(f"{run.sidecar}: no raw '*{suffix}' source found under {bids_root} (the BIDS root of "
                       f"--truth-dir); the noise-free reference needs the raw gradients")


def _truth_folder(truth_dir: Path, run: PreparedRun) -> Path:
    folder = truth_dir / f"sub-{run.subject}"
    session = next((part.removeprefix("ses-") for part in run.prefix.split("_") if part.startswith("ses-")), None)
    if session is not None and (folder / f"ses-{session}").is_dir():
        folder = folder / f"ses-{session}"
    if not (folder / "truth.json").is_file():
        raise NoInputError(f"{folder}: no phantom ground truth for {run.prefix}")
    return folder


def noise_free_prepared(run: PreparedRun, truth_dir: str | Path, work_dir: str | Path | None = None,
                        threads: int = 1) -> np.ndarray:
    """``(X, Y, Z, N)`` float32: the noise-free prepared series of ``run`` (see the module docstring)."""
    from ..prep.gradients import read_fsl
    from ..prep.resample import resample_series

    truth_dir = truth_root(truth_dir)
    if not run.forward.is_file():
        raise NoInputError(f"{run.forward}: the DWI -> template transform of {run.prefix} is missing")
    bvec = _raw_source(run, truth_dir, "_dwi.bvec")
    bval = bvec.with_name(bvec.name.replace(".bvec", ".bval"))
    table = read_fsl(bval, bvec)
    truth = read_truth(_truth_folder(truth_dir, run))
    signal = truth.signal(table.bvals, table.bvecs).astype(np.float32)
    prepared_bvals = np.loadtxt(run.bval, ndmin=1)
    if prepared_bvals.size != table.bvals.size or not np.allclose(prepared_bvals, table.bvals, atol=1.0):
        raise InputDataError(f"{run.bval}: b-values differ from the raw {bval}; cannot pair the volumes")
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        native = Path(tmp) / "noise_free_native.nii.gz"
        nib.Nifti1Image(signal, truth.affine).to_filename(str(native))
        out = resample_series(native, run.forward, run.b0ref, Path(tmp) / "noise_free_template.nii.gz",
                              Path(tmp) / "work", threads=threads, interpolation="linear")
        data = np.asarray(nib.load(str(out)).dataobj, dtype=np.float32)
    if data.ndim == 3:
        data = data[..., None]
    return data


def template_white_matter(run: PreparedRun, truth_dir: str | Path) -> np.ndarray:
    """``(X, Y, Z)`` bool: the template truth's white matter at the run's resolution, on the run's grid."""
    truth_dir = truth_root(truth_dir)
    folder = truth_dir / "template" / f"res-{run.res}"
    labels = folder / "tissue_dseg.nii.gz"
    if not labels.is_file():
        raise NoInputError(f"{labels}: no template truth at res-{run.res}")
    img = nib.load(str(labels))
    ref = nib.load(str(run.b0ref))
    if not same_grid(img.shape, img.affine, ref.shape, ref.affine):
        raise InputDataError(f"{labels}: grid {img.shape[:3]} is not the grid of {run.b0ref} {ref.shape[:3]}")
    return np.asarray(img.dataobj) == WM_LABEL
