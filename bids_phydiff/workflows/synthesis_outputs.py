"""The derivatives of one synthesised run: BIDS names, sidecars, metrics tables, native space, figure.

Each writer takes what :func:`bids_phydiff.synth.run.synthesise_run` returned and writes one kind of
output atomically; :func:`bids_phydiff.workflows.synthesis.synthesise_one` composes them. Names follow
DESIGN.md section 5: in template space ``<prefix>_space-<tpl>_res-<r>_desc-synth_dwi.nii.gz`` (+ ``.bval``,
``.bvec``, ``.json``), ``desc-synthstd`` for the spread over samples, ``desc-synth_metrics.tsv`` and
``desc-synth_shellmetrics.tsv`` against the acquired data, on the run's own grid ``<prefix>_desc-synth_dwi``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..bids.derivatives import derivative_path, write_json
from ..bids.layout import DwiRun
from ..bids.prepared import PreparedRun

LOGGER = logging.getLogger(__name__)

SPATIAL_FIELDS = ("Resolution", "SpatialReference")
"""Sidecar fields that describe the template grid (true in template space only)."""


@dataclass(frozen=True)
class SynthesisPaths:
    """Every file a synthesis of ``run`` may write; which ones a given synthesis writes depends on its
    options (``std`` with K > 1 samples, ``metrics`` for the acquired scheme, ``native`` on request)."""

    dwi: Path
    std: Path
    metrics: Path
    shell_metrics: Path
    native: Path
    figure: Path

    @classmethod
    def of_run(cls, output_dir: Path, run: DwiRun, template: str, res_label: str | None) -> "SynthesisPaths":
        space = {"space": template, "res": res_label}
        metrics = derivative_path(output_dir, run, "metrics", ".tsv", **space, desc="synth")
        return cls(
            dwi=derivative_path(output_dir, run, "dwi", ".nii.gz", **space, desc="synth"),
            std=derivative_path(output_dir, run, "dwi", ".nii.gz", **space, desc="synthstd"),
            metrics=metrics,
            shell_metrics=metrics.with_name(metrics.name.replace("_metrics", "_shellmetrics")),
            native=derivative_path(output_dir, run, "dwi", ".nii.gz", desc="synth"),
            figure=Path(output_dir) / f"sub-{run.subject}" / "figures" / f"{run.prefix}_desc-synth_dwi.png",
        )

    def files_of(self, name: str) -> list[Path]:
        """The files of output ``name``: a NIfTI with its ``.bval``/``.bvec``/``.json``, or one file."""
        path = getattr(self, name)
        if path.name.endswith(".nii.gz"):
            return [path] + [sibling(path, ext) for ext in (".bval", ".bvec", ".json")]
        return [path]


def sibling(nifti: Path, extension: str) -> Path:
    """The file beside a ``.nii.gz`` with another extension (``.bval``, ``.bvec``, ``.json``)."""
    return nifti.with_name(nifti.name[: -len(".nii.gz")] + extension)


def bids_relative(path: Path, output_dir: Path) -> str:
    """``bids::sub-X/...``: a BIDS URI of a file of this derivative dataset."""
    return f"bids::{Path(path).relative_to(output_dir).as_posix()}"


def spatial_fields(prepared: PreparedRun) -> dict:
    """Resolution and SpatialReference as the prepared run's sidecar states them."""
    meta = json.loads(prepared.sidecar.read_text()) if prepared.sidecar.is_file() else {}
    return {k: meta[k] for k in SPATIAL_FIELDS if k in meta}


def write_gradients(table, nifti: Path) -> tuple[Path, Path]:
    """Write ``table`` (a :class:`~bids_phydiff.prep.gradients.GradientTable`) beside ``nifti``."""
    from ..prep.gradients import write_fsl

    bval, bvec = sibling(nifti, ".bval"), sibling(nifti, ".bvec")
    with atomic_path(bval) as tmp_bval, atomic_path(bvec) as tmp_bvec:
        write_fsl(table, tmp_bval, tmp_bvec)
    return bval, bvec


def write_series(series: np.ndarray, affine: np.ndarray, table, meta: dict, target: Path) -> Path:
    """A 4-D series ``(X, Y, Z, N)`` with its gradients and sidecar."""
    from ..prep.nifti import save_image

    save_image(series, affine, target)
    write_gradients(table, target)
    write_json(sibling(target, ".json"), meta)
    return target


def write_metrics(rows: list[dict], summary: list[dict], paths: SynthesisPaths) -> Path:
    """Per-volume rows and per-shell summaries (:mod:`bids_phydiff.eval.compare`) as TSV."""
    from ..eval.metrics import write_tsv

    write_tsv(rows, paths.metrics)
    write_tsv(summary, paths.shell_metrics)
    return paths.metrics


def write_native(paths: SynthesisPaths, run: DwiRun, prepared: PreparedRun, meta: dict, output_dir: Path,
                 work_dir: Path, omp_nthreads: int) -> Path:
    """The template-space synthesis resampled onto the run's own DWI grid through the inverse transform,
    with its b-vectors rotated back and a sidecar without the template's spatial fields."""
    from ..prep.gradients import write_reoriented_fsl
    from ..prep.resample import to_native

    work_dir.mkdir(parents=True, exist_ok=True)
    to_native(paths.dwi, prepared.inverse, run.dwi, paths.native, work_dir, omp_nthreads)  # written atomically
    write_reoriented_fsl(sibling(paths.dwi, ".bval"), sibling(paths.dwi, ".bvec"), paths.dwi, run.dwi,
                         sibling(paths.native, ".bval"), sibling(paths.native, ".bvec"), [prepared.inverse])
    write_json(sibling(paths.native, ".json"), {
        **{k: v for k, v in meta.items() if k not in SPATIAL_FIELDS},
        "Sources": meta["Sources"] + [bids_relative(prepared.inverse, output_dir)],
        "Description": meta["Description"] + " Resampled onto the run's own DWI grid; b-vectors rotated back.",
    })
    return paths.native


def write_figure(scheme, mean: np.ndarray, std: np.ndarray | None, acquired: np.ndarray | None, mask: np.ndarray,
                 out_path: Path, title: str) -> Path:
    """The middle brain slice of the first volume of each shell: acquired, synthetic, |error|, uncertainty."""
    from ..reports.figures import plot_synthesis

    z = int(np.median(np.nonzero(mask.any(axis=(0, 1)))[0])) if mask.any() else mean.shape[2] // 2
    rows = []
    for shell in scheme.shells():
        n = int(np.flatnonzero(np.abs(scheme.bvals - shell) <= 100)[0])
        panels = {"synthetic": mean[:, :, z, n]}
        if acquired is not None:
            panels["acquired"] = acquired[:, :, z, n]
            panels["|error|"] = np.abs(mean[:, :, z, n] - acquired[:, :, z, n]) * mask[:, :, z]
        if std is not None:
            panels["uncertainty"] = std[:, :, z, n]
        rows.append((f"b = {shell:g}", panels))
    return plot_synthesis(rows, out_path, title)


def remove_stale(paths: SynthesisPaths, written: set[str]) -> list[Path]:
    """Delete the outputs of an earlier synthesis of the same run that this one did not write again (say,
    metrics of the acquired scheme beside a synthesis of another scheme); returns what was removed."""
    removed = []
    for name in ("std", "metrics", "shell_metrics", "native"):
        if name in written:
            continue
        for path in paths.files_of(name):
            if path.is_file():
                path.unlink()
                removed.append(path)
    if removed:
        LOGGER.info("removed %d output(s) of an earlier synthesis of this run: %s", len(removed),
                    ", ".join(p.name for p in removed))
    return removed
