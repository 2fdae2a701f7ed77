"""Participant level with ``--model``: synthetic DWI for every selected run (DESIGN.md section 2).

Each run is first prepared on the bundle's grid (the Nipype prepare workflow; cached, or skipped when
its derivatives are already there). Sampling then runs in this process, run after run, on one device:
a model held by Nipype workers would be loaded once per process and compete for the GPU.

Per run this writes, in template space (and with ``--output-space native`` also on the run's own grid):
``*_desc-synth_dwi.nii.gz`` (+ ``.bval``/``.bvec``/``.json``), ``*_desc-synthstd_dwi.nii.gz`` with K > 1
samples, and for the acquired scheme ``*_desc-synth_metrics.tsv`` and a figure per shell in
``sub-X_synthesis.html``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from ..atomic import atomic_path, remove_stale_temporaries
from ..bids.checks import CheckedRun
from ..bids.derivatives import (
    PreparedFiles,
    derivative_path,
    init_output_dir,
    write_json,
)
from ..errors import InputDataError

LOGGER = logging.getLogger(__name__)



def load_model_bundle(path: Path, device: str):
    """The bundle at ``path`` on ``device``; a corrupt or foreign bundle is an :class:`InputDataError`
    (exit 65) naming the file."""
    from ..model.bundle import BundleError, load_bundle
    from ..model.device import resolve_device

    try:
        return load_bundle(path, device=resolve_device(device))
    except BundleError as exc:
        raise InputDataError(f"model bundle {path}: {exc}") from None


def target_scheme(opts, prepared: PreparedFiles, seed: int, b0_threshold: float):
    """The scheme to synthesise for one run (:class:`bids_phydiff.synth.scheme.TargetScheme`)."""
    from ..synth.scheme import acquired_scheme, scheme_from_files, shell_scheme

    try:
        if opts.target_shells:
            return shell_scheme(opts.target_shells, opts.target_directions, n_b0=1, seed=seed,
                                b0_threshold=b0_threshold)
        if opts.target_scheme == ("acquired",):
            return acquired_scheme(prepared.bval, prepared.bvec, b0_threshold)
        return scheme_from_files(*opts.target_scheme, b0_threshold=b0_threshold)
    except ValueError as exc:
        raise InputDataError(f"target scheme: {exc}") from None


def _spatial_fields(prepared_dwi: Path) -> dict:
    """Resolution and SpatialReference as the prepared run's sidecar states them."""
    import json

    sidecar = _sibling(prepared_dwi, ".json")
    meta = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    return {k: meta[k] for k in ("Resolution", "SpatialReference") if k in meta}


def _sibling(nifti: Path, extension: str) -> Path:
    """The file beside a ``.nii.gz`` with another extension (``.bval``, ``.bvec``, ``.json``)."""
    return nifti.with_name(nifti.name[: -len(".nii.gz")] + extension)


def _write_gradients(table, nifti: Path) -> tuple[Path, Path]:
    from ..prep.gradients import write_fsl

    bval, bvec = _sibling(nifti, ".bval"), _sibling(nifti, ".bvec")
    with atomic_path(bval) as tmp_bval, atomic_path(bvec) as tmp_bvec:
        write_fsl(table, tmp_bval, tmp_bvec)
    return bval, bvec


def _slice_figure(run: CheckedRun, scheme, mean, std, acquired, mask, out_path: Path, title: str) -> Path:
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


def synthesise_run(run: CheckedRun, prepared: PreparedFiles, bundle, config, conditions, work_dir: Path) -> dict:
    """Synthesise one run and write its outputs; returns what the report and the log need."""
    from ..eval.metrics import series_metrics, summarise_by_shell, write_tsv
    from ..synth.inputs import CLIP_X0, app_sampler
    from ..prep.gradients import write_reoriented_fsl
    from ..prep.nifti import save_image
    from ..prep.resample import to_native
    from ..synth.grid import check_grid, slice_grid
    from ..synth.volume import synthesise
    from ..train.normalise import Normaliser

    opts, out = config.synth, config.output_dir
    b0_img = nib.load(str(prepared.b0ref))
    check_grid(bundle.grid, b0_img.shape, b0_img.affine, str(prepared.b0ref))
    b0 = np.asarray(b0_img.dataobj, dtype=np.float32)
    mask = np.asarray(nib.load(str(prepared.mask)).dataobj) > 0
    scheme = target_scheme(opts, prepared, config.seed, config.b0_threshold)
    sampler = app_sampler(opts.sampler, opts.steps, opts.strength, opts.eta)
    start = time.monotonic()
    result = synthesise(bundle.model, b0, mask, scheme, conditions.adc_atlas, conditions.shells,
                        slice_grid(bundle.grid, bundle.model), sampler, samples=opts.samples,
                        batch_size=opts.batch_size, seed=config.seed, tracts=conditions.tracts)
    seconds = time.monotonic() - start
    LOGGER.info("%s: %d volumes synthesised in %.1f s", run.run.dwi.name, len(scheme), seconds)

    grid = bundle.grid
    res = config_res_label(bundle)
    space = {"space": grid.template, "res": res}
    target = derivative_path(out, run.run, "dwi", ".nii.gz", **space, desc="synth")
    rel = lambda p: f"bids::{Path(p).relative_to(out).as_posix()}"  # noqa: E731
    meta = {
        "SkullStripped": True,
        "Sources": [rel(prepared.b0ref), rel(prepared.mask)],
        **_spatial_fields(prepared.dwi),
        "Description": "Synthetic DWI (Phy-Diff) from the b0 reference; voxels outside the brain mask are 0.",
        "ModelBundle": str(bundle.path),
        "ModelChecksum": f"sha256:{bundle.weights_sha256}",
        "ModelCodeVersion": bundle.code_version,
        "Sampler": opts.sampler,
        "SamplingSteps": 1000 if opts.sampler == "ddpm" else opts.steps,
        "Strength": opts.strength,
        "DDIMEta": opts.eta if opts.sampler == "ddim" else None,
        "Samples": opts.samples,
        "ClampPredictedX0": list(CLIP_X0),
        "RandomSeed": config.seed,
        "TargetScheme": scheme.source,
        "SynthesisSeconds": round(seconds, 1),
    }
    affine = np.asarray(grid.affine)
    save_image(result.mean, affine, target)
    bval, bvec = _write_gradients(scheme.table(), target)
    write_json(_sibling(target, ".json"), meta)
    outputs = {"dwi": target}
    if result.std is not None:
        std_path = derivative_path(out, run.run, "dwi", ".nii.gz", **space, desc="synthstd")
        save_image(result.std, affine, std_path)
        _write_gradients(scheme.table(), std_path)
        write_json(_sibling(std_path, ".json"),
                   {**meta, "Description": f"Per-voxel standard deviation over {opts.samples} samples"})
        outputs["std"] = std_path

    acquired, summary = None, []
    if scheme.source == "acquired":
        from ..eval.baseline import physics_baseline

        acquired = np.asarray(nib.load(str(prepared.dwi)).dataobj, dtype=np.float32)
        scale = Normaliser.from_b0(b0, mask).scale
        baseline = physics_baseline(b0, scheme.bvals, conditions.adc_atlas, conditions.shells, mask=mask)
        rows, summary = [], []
        for method, series in (("phydiff", result.mean), ("physics_baseline", baseline)):
            method_rows = [{"method": method, **row}
                           for row in series_metrics(series, acquired, scheme.bvals, mask, scale=scale)]
            rows += method_rows
            summary += [{"method": method, **row} for row in summarise_by_shell(method_rows)]
        metrics_path = derivative_path(out, run.run, "metrics", ".tsv", **space, desc="synth")
        write_tsv(rows, metrics_path)
        write_tsv(summary, metrics_path.with_name(metrics_path.name.replace("_metrics", "_shellmetrics")))
        outputs["metrics"] = metrics_path

    if opts.output_space == "native":
        native = derivative_path(out, run.run, "dwi", ".nii.gz", desc="synth")
        work = work_dir / "native" / run.run.prefix
        work.mkdir(parents=True, exist_ok=True)
        to_native(target, prepared.inverse, run.run.dwi, native, work, config.omp_nthreads)  # written atomically
        write_reoriented_fsl(bval, bvec, target, run.run.dwi, _sibling(native, ".bval"), _sibling(native, ".bvec"),
                             [prepared.inverse])
        write_json(_sibling(native, ".json"),
                   {**{k: v for k, v in meta.items() if k not in ("Resolution", "SpatialReference")},
                    "Sources": meta["Sources"] + [rel(prepared.inverse)],
                    "Description": meta["Description"] + " Resampled onto the run's own DWI grid; b-vectors "
                                   "rotated back."})
        outputs["native"] = native

    figure = out / f"sub-{run.run.subject}" / "figures" / f"{run.run.prefix}_desc-synth_dwi.png"
    _slice_figure(run, scheme, result.mean, result.std, acquired, mask, figure,
                  f"{run.run.prefix}: {opts.sampler}, seed {config.seed}")
    outputs["figure"] = figure
    return {"run": run, "outputs": outputs, "summary": summary, "seconds": seconds}


def config_res_label(bundle) -> str | None:
    """The res- label of the bundle's grid (recorded at training; else looked up in TemplateFlow)."""
    if "res_label" in bundle.metadata:
        return bundle.metadata["res_label"]
    from ..prep.templates import load_template

    return load_template(bundle.grid.template, bundle.grid.resolution).res_label


def format_summary(summary: list[dict]) -> str:
    """The per-shell metrics as a text table (masked PSNR/SSIM/NRMSE in signal units, then the paper's)."""
    lines = [f"{'method':16s} {'shell':>6s} {'vols':>5s} {'PSNR':>7s} {'SSIM':>6s} {'NRMSE':>6s} "
             f"{'paper PSNR':>10s} {'paper SSIM':>10s}"]
    for row in summary:
        shell = row["shell"] if isinstance(row["shell"], str) else f"{row['shell']:g}"
        lines.append(f"{row['method']:16s} {shell:>6s} {row['volumes']:5d} {row['psnr_mean']:7.2f} {row['ssim_mean']:6.3f} "
                     f"{row['nrmse_mean']:6.3f} {row['paper_psnr_mean']:10.2f} {row['paper_ssim_mean']:10.3f}")
    return "\n".join(lines)


def run_synthesis(config, checked: list[CheckedRun]) -> list[dict]:
    """Prepare (if needed) and synthesise every checked run with the bundle ``config.model``."""
    from ..reports.html import Section, write_report
    from ..synth.inputs import bundle_conditions
    from .participant import run_participant

    bundle = load_model_bundle(config.model, config.device)
    grid = bundle.grid
    if (config.template, config.output_resolution) != (grid.template, grid.resolution):
        LOGGER.info("using the bundle's grid: %s at %g mm", grid.template, grid.resolution)
    prep_config = dataclasses.replace(config, template=grid.template, output_resolution=grid.resolution)
    init_output_dir(config.output_dir, config.bids_dir)
    for subject in sorted({r.run.subject for r in checked}):
        # only this run's subjects: a job array shares output_dir, and another job's temporaries are live
        remove_stale_temporaries(config.output_dir / f"sub-{subject}")
    res = config_res_label(bundle)
    files = [PreparedFiles.of_run(config.output_dir, r.run, grid.template, res) for r in checked]
    missing = [r for r, f in zip(checked, files) if f.missing()]
    if missing:
        LOGGER.info("preparing %d run(s) on the bundle's grid first", len(missing))
        run_participant(prep_config, missing)
    for r, f in zip(checked, files):
        if f.missing():
            raise InputDataError(f"{r.run.dwi}: prepare did not produce {[str(p) for p in f.missing()]}")

    conditions = bundle_conditions(bundle)

    results = []
    for run, prepared in zip(checked, files):
        results.append(synthesise_run(run, prepared, bundle, config, conditions, config.work_dir / "synthesis"))
        for line in format_summary(results[-1]["summary"]).splitlines() if results[-1]["summary"] else []:
            LOGGER.info("%s | %s", run.run.prefix, line)
    for subject in sorted({r.run.subject for r in checked}):
        sections = [Section(f"{res['run'].run.prefix}: synthetic DWI", res["outputs"]["figure"],
                            "The middle brain slice of the first volume of each shell: acquired (when the target "
                            "is the acquired scheme), synthetic, their absolute difference, and the per-voxel "
                            "standard deviation over samples (with --samples > 1).")
                    for res in results if res["run"].run.subject == subject]
        notes = [f"Model {bundle.path} (sha256 {bundle.weights_sha256[:12]}), sampler {config.synth.sampler}, "
                 f"steps {config.synth.steps}, strength {config.synth.strength:g}, seed {config.seed}."]
        report = write_report(config.output_dir / f"sub-{subject}_synthesis.html", subject, sections, notes)
        LOGGER.info("report: %s", report)
    return results
