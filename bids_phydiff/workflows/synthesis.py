"""Participant level with ``--model``: synthetic DWI for every selected run (DESIGN.md section 2).

Each run is first prepared on the bundle's grid (the Nipype prepare workflow; cached, or skipped when
its derivatives are already there). Sampling then runs in this process, run after run, on one device:
a model held by Nipype workers would be loaded once per process and compete for the GPU.

Per run this writes, in template space (and with ``--output-space native`` also on the run's own grid):
``*_desc-synth_dwi.nii.gz`` (+ ``.bval``/``.bvec``/``.json``), ``*_desc-synthstd_dwi.nii.gz`` with K > 1
samples, and for the acquired scheme ``*_desc-synth_metrics.tsv`` (per volume) and
``*_desc-synth_shellmetrics.tsv`` (per shell: masked PSNR/SSIM/NRMSE, the paper's PSNR/SSIM, and the seam
and sharpness scores of :mod:`bids_phydiff.eval.fidelity`), and a figure per shell with that table in
``sub-X_synthesis.html``.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from ..atomic import remove_stale_temporaries
from ..bids.checks import CheckedRun
from ..bids.derivatives import init_output_dir
from ..bids.prepared import PreparedRun
from ..config import RunConfig
from ..errors import InputDataError
from .synthesis_outputs import (
    SynthesisPaths,
    bids_relative,
    remove_stale,
    spatial_fields,
    write_figure,
    write_metrics,
    write_native,
    write_series,
)

if TYPE_CHECKING:  # torch-free at import: the CLI loads this module before it knows it needs torch
    from ..model.sampling import SamplerConfig
    from ..synth.run import LoadedBundle
    from ..synth.scheme import TargetScheme

LOGGER = logging.getLogger(__name__)

METHOD = "phydiff"
BASELINE = "physics_baseline"
"""The method names of the synthesis metrics tables."""
METRICS_CAPTION = (" The table: per shell, the mean over volumes against the acquired data inside the brain mask; "
                   "PSNR (dB) and SSIM with the b0 scale as data range; seam = image gradient across the model's "
                   "patch boundaries over within patches, relative to the acquired image's (1 = no seams); "
                   "sharpness = the part of the acquired image's fine detail that the synthesis reproduces "
                   "(1 = all of it, lower = blurred; noise does not raise it).")


def target_scheme(opts, prepared: PreparedRun, seed: int, b0_threshold: float):
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


def synthetic_sidecar(prepared: PreparedRun, loaded: LoadedBundle, sampler: SamplerConfig, scheme: TargetScheme,
                      config: RunConfig, seconds: float) -> dict:
    """The ``desc-synth`` sidecar: sources, model, sampler and its real number of model evaluations, seed."""
    from ..synth.inputs import CLIP_X0
    from ..synth.run import model_evaluations

    opts, out = config.synth, config.output_dir
    bundle = loaded.bundle
    return {
        "SkullStripped": True,
        "Sources": [bids_relative(prepared.b0ref, out), bids_relative(prepared.mask, out)],
        **spatial_fields(prepared),
        "Description": "Synthetic DWI (Phy-Diff) from the b0 reference; voxels outside the brain mask are 0.",
        "ModelBundle": str(bundle.path),
        "ModelChecksum": f"sha256:{bundle.weights_sha256}",
        "ModelCodeVersion": bundle.code_version,
        "Sampler": opts.sampler,
        "SamplingSteps": model_evaluations(bundle, sampler),
        "Strength": opts.strength,
        "DDIMEta": opts.eta if opts.sampler == "ddim" else None,
        "ShiftedPasses": sampler.shifts,
        "Samples": opts.samples,
        "ClampPredictedX0": list(CLIP_X0),
        "RandomSeed": config.seed,
        "TargetScheme": scheme.source,
        "SynthesisSeconds": round(seconds, 1),
    }


def metrics_against_acquired(subject, scheme, mean, conditions, patches, context=None) -> tuple[list[dict], list[dict]]:
    """Per-volume rows and per-shell summaries of the synthesis and the physics baseline S0 exp(-b ADC)
    against the acquired data, masked, in signal units; seams on the model's patch grid ``patches``
    (:func:`bids_phydiff.eval.compare.model_patch_grid`, for every method). With the ``context``
    (:class:`bids_phydiff.synth.run.ContextSource`) of a context model, also the tensor extrapolation
    from the same volumes (:func:`bids_phydiff.eval.tensor_extrapolation.context_baseline`)."""
    from ..eval.baseline import physics_baseline
    from ..eval.compare import metric_rows, summarise
    from ..eval.tensor_extrapolation import TENSOR_BASELINE, context_baseline

    methods = {METHOD: mean,
               BASELINE: physics_baseline(subject.b0, scheme.bvals, conditions.adc_atlas, conditions.shells,
                                          mask=subject.mask)}
    if context is not None:
        methods[TENSOR_BASELINE] = context_baseline(context, subject.mask, scheme.bvals, scheme.bvecs)
    rows = metric_rows(methods, subject.dwi, scheme.bvals, subject.mask, subject.scale, patches=patches)
    return rows, summarise(rows, keys=("method",))


def synthesise_one(run: CheckedRun, prepared: PreparedRun, loaded: LoadedBundle, sampler: SamplerConfig,
                   config: RunConfig, paths: SynthesisPaths) -> dict:
    """Synthesise one run and write its outputs (:mod:`.synthesis_outputs`); returns what the report and
    the log need: ``run``, ``outputs`` (name -> path), ``summary`` (per-shell metrics rows), ``seconds``."""
    import numpy as np

    from ..synth.run import context_source, load_subject, synthesise_run

    opts, out = config.synth, config.output_dir
    scheme = target_scheme(opts, prepared, config.seed, config.b0_threshold)
    acquired = scheme.source == "acquired"
    subject = load_subject(prepared, with_dwi=acquired)
    result, seconds = synthesise_run(loaded, subject, scheme, sampler, seed=config.seed,
                                     batch_size=opts.batch_size, samples=opts.samples)
    LOGGER.info("%s: %d volumes synthesised in %.1f s", run.run.dwi.name, len(scheme), seconds)

    meta = synthetic_sidecar(prepared, loaded, sampler, scheme, config, seconds)
    affine = np.asarray(loaded.bundle.grid.affine)
    outputs = {"dwi": write_series(result.mean, affine, scheme.table(), meta, paths.dwi)}
    if result.std is not None:
        outputs["std"] = write_series(result.std, affine, scheme.table(), {
            **meta, "Description": f"Per-voxel standard deviation over {opts.samples} samples"}, paths.std)
    summary = []
    if acquired:
        from ..eval.compare import model_patch_grid

        rows, summary = metrics_against_acquired(subject, scheme, result.mean, loaded.conditions,
                                                 model_patch_grid(loaded.bundle), context_source(loaded, subject))
        outputs["metrics"] = write_metrics(rows, summary, paths)
        outputs["shell_metrics"] = paths.shell_metrics
    if opts.output_space == "native":
        outputs["native"] = write_native(paths, run.run, prepared, meta, out,
                                         config.work_dir / "synthesis" / "native" / run.run.prefix,
                                         config.omp_nthreads)
    remove_stale(paths, set(outputs))
    outputs["figure"] = write_figure(scheme, result.mean, result.std, subject.dwi if acquired else None,
                                     subject.mask, paths.figure, f"{run.run.prefix}: {opts.sampler}, seed {config.seed}")
    return {"run": run, "outputs": outputs, "summary": summary, "seconds": seconds}


def config_res_label(bundle) -> str | None:
    """The res- label of the bundle's grid (recorded at training; else looked up in TemplateFlow)."""
    if "res_label" in bundle.metadata:
        return bundle.metadata["res_label"]
    from ..prep.templates import load_template

    return load_template(bundle.grid.template, bundle.grid.resolution).res_label


SUMMARY_COLUMNS = (("method", "method", "s"), ("shell", "shell", "s"), ("vols", "volumes", "d"),
                   ("PSNR", "psnr_mean", ".2f"), ("SSIM", "ssim_mean", ".3f"), ("NRMSE", "nrmse_mean", ".3f"),
                   ("seam", "seam_mean", ".3f"), ("sharpness", "sharpness_mean", ".3f"),
                   ("paper PSNR", "paper_psnr_mean", ".2f"), ("paper SSIM", "paper_ssim_mean", ".3f"))
"""The per-shell table of the log and the report: (heading, summary key, format)."""


def summary_table(summary: list[dict]) -> list[list[str]]:
    """The per-shell metrics as rows of text, the headings first (masked PSNR/SSIM/NRMSE in signal units,
    seam and sharpness scores, then the paper's PSNR/SSIM)."""
    table = [[heading for heading, _, _ in SUMMARY_COLUMNS]]
    for row in summary:
        cells = []
        for _, key, fmt in SUMMARY_COLUMNS:
            value = row.get(key, float("nan"))
            cells.append(f"{value:g}" if key == "shell" and not isinstance(value, str) else format(value, fmt))
        table.append(cells)
    return table


def format_summary(summary: list[dict]) -> str:
    """:func:`summary_table` as aligned text (the method column left-aligned)."""
    table = summary_table(summary)
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    return "\n".join(" ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in table)


def run_synthesis(config: RunConfig, checked: list[CheckedRun]) -> list[dict]:
    """Prepare (if needed) and synthesise every checked run with the bundle ``config.model``."""
    from ..reports.html import Section, write_report
    from ..synth.inputs import app_sampler
    from ..synth.run import load_bundle
    from .participant import run_participant

    loaded = load_bundle(config.model, config.device)
    bundle, grid = loaded.bundle, loaded.bundle.grid
    if (config.template, config.output_resolution) != (grid.template, grid.resolution):
        LOGGER.info("using the bundle's grid: %s at %g mm", grid.template, grid.resolution)
    prep_config = dataclasses.replace(config, template=grid.template, output_resolution=grid.resolution)
    init_output_dir(config.output_dir, config.bids_dir)
    for subject in sorted({r.run.subject for r in checked}):
        # only this run's subjects: a job array shares output_dir, and another job's temporaries are live
        remove_stale_temporaries(config.output_dir / f"sub-{subject}")
    res = config_res_label(bundle)
    files = [PreparedRun.of_run(config.output_dir, r.run, grid.template, res) for r in checked]
    missing = [r for r, f in zip(checked, files) if f.missing()]
    if missing:
        LOGGER.info("preparing %d run(s) on the bundle's grid first", len(missing))
        run_participant(prep_config, missing)
    for r, f in zip(checked, files):
        if f.missing():
            raise InputDataError(f"{r.run.dwi}: prepare did not produce {[str(p) for p in f.missing()]}")

    opts = config.synth
    sampler = app_sampler(opts.sampler, opts.steps, opts.strength, opts.eta, opts.shifts or bundle.model.shifts)
    results = []
    for run, prepared in zip(checked, files):
        paths = SynthesisPaths.of_run(config.output_dir, run.run, grid.template, res)
        results.append(synthesise_one(run, prepared, loaded, sampler, config, paths))
        for line in format_summary(results[-1]["summary"]).splitlines() if results[-1]["summary"] else []:
            LOGGER.info("%s | %s", run.run.prefix, line)
    for subject in sorted({r.run.subject for r in checked}):
        sections = [Section(f"{res['run'].run.prefix}: synthetic DWI", res["outputs"]["figure"],
                            "The middle brain slice of the first volume of each shell: acquired (when the target "
                            "is the acquired scheme), synthetic, their absolute difference, and the per-voxel "
                            "standard deviation over samples (with --samples > 1)." + (METRICS_CAPTION
                                                                                       if res["summary"] else ""),
                            summary_table(res["summary"]) if res["summary"] else ())
                    for res in results if res["run"].run.subject == subject]
        notes = [f"Model {bundle.path} (sha256 {bundle.weights_sha256[:12]}), sampler {opts.sampler}, "
                 f"steps {opts.steps}, strength {opts.strength:g}, {sampler.shifts} shifted pass(es), seed {config.seed}."]
        report = write_report(config.output_dir / f"sub-{subject}_synthesis.html", subject, sections, notes)
        LOGGER.info("report: %s", report)
    return results
