"""Evaluate model bundles and baselines on prepared held-out subjects: image metrics per b-shell and DTI.

For every prepared run of the chosen subjects (:func:`bids_phydiff.bids.prepared.find_prepared`) and every *method*:

- each bundle ``NAME=FOLDER`` synthesises the run's acquired scheme from its b0 reference with
  :func:`bids_phydiff.synth.volume.synthesise`, the bundle's ADC and tract atlases
  (:func:`bids_phydiff.synth.inputs.bundle_conditions`) and the app's sampler (:func:`~bids_phydiff.synth.inputs.app_sampler`);
- ``physics_baseline``: S0 * exp(-b ADC_atlas(b)) (:func:`.baseline.physics_baseline`) with the FIRST bundle's
  ADC atlas, in the brain mask;
- ``tensor_extrapolation``, when a bundle has a context (q-space completion): S0 exp(-b g^T D g) of the
  tensor fitted to the volumes the FIRST such bundle takes its context from
  (:func:`.tensor_extrapolation.context_baseline`), which sees the subject's own fibre directions;
- ``acquired`` (on request): the prepared DWI itself; against the acquired reference it is perfect (the
  sanity row: PSNR inf, SSIM 1, DTI errors 0), against the noise-free truth it is the noise floor.

Each method's series ``(X, Y, Z, N)`` (signal units) is compared with each *reference*:

- ``acquired``: the prepared DWI (noisy);
- ``truth`` (with ``truth_dir``, a phantom): the noise-free signal through the same preparation
  (:func:`.truth_reference.noise_free_prepared`).

Image metrics (:func:`.metrics.series_metrics`): every diffusion-weighted volume, masked metrics in signal
units (PSNR and SSIM with the data range = the b0 scale, NRMSE) and the paper protocol, and the seam and
sharpness scores (:mod:`.fidelity`; seams on each bundle's own patch grid, the first bundle's for the
baseline and the acquired data); then per shell the mean and std over volumes (of all evaluated runs together). DTI (:func:`.dti.dti_agreement`): tensors of the
full series (b0 copies included) against the reference's, in white matter, one row per region:
``fa>0.3`` = FA > 0.3 of the noise-free truth's fit (with ``truth_dir``) or of the acquired data's inside the
brain mask, the fibres whose orientation synthesis must keep; with ``truth_dir`` also ``wm-label`` = the
template truth's white-matter label in the mask, which in the phantom is mostly isotropic (in a 4 mm subject
82% of it has truth FA below 0.1), so there an isotropic prediction scores well by construction. For a
multi-shell run, per region also the mean kurtosis of the whole series and the fibre directions of each
shell's tensor (:mod:`.kurtosis`): what q-space completion must reproduce beyond a tensor.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..bids.prepared import find_prepared
from ..errors import InputDataError, NoInputError
from ..model.bundle import ADC_ATLAS_FILE, TRAIN_JSON
from ..model.sampling import SamplerConfig
from ..prep.gradients import B0_THRESHOLD, SHELL_TOLERANCE, unique_shells
from ..synth.run import LoadedBundle, context_source, load_bundle, load_subject, synthesise_acquired
from .baseline import physics_baseline
from .compare import dti_rows, metric_rows, model_patch_grid, qspace_rows, summarise
from .dti import fit_dti
from .kurtosis import kurtosis_fittable
from .tensor_extrapolation import TENSOR_BASELINE, context_baseline

log = logging.getLogger(__name__)

__all__ = [
    "ACQUIRED",
    "BASELINE",
    "FA_WM_THRESHOLD",
    "FIBRE_REGION",
    "TISSUE_REGION",
    "EvaluationResult",
    "evaluate",
    "fa_white_matter",
    "load_bundles",
]

BASELINE = "physics_baseline"
ACQUIRED = "acquired"
TRUTH = "truth"
FA_WM_THRESHOLD = 0.3
"""The fibres: FA of the noise-free truth's (else the acquired data's) tensor fit above this, in the brain mask."""
FIBRE_REGION = "fa>0.3"
TISSUE_REGION = "wm-label"
"""The DTI regions' names in the tables (module docstring)."""


@dataclass
class EvaluationResult:
    """Rows as written to the tables (see :mod:`.tables`), the settings, and timings.

    ``volumes``: one row per (subject, reference, method, volume); ``shells``: per (reference, method, shell);
    ``dti``: per (subject, reference, method); ``qspace``: per (subject, reference, region, method) the mean
    kurtosis and per-shell fibre directions, for multi-shell runs; ``samplers``: the sampler comparison (or empty);
    ``timings``: per (subject, method) synthesis seconds; ``slices``: per (run, shell) the middle brain slice
    ``(X, Y)`` of the shell's first volume of every method and of the acquired data (``images``), for the
    figures."""

    volumes: list[dict] = field(default_factory=list)
    shells: list[dict] = field(default_factory=list)
    dti: list[dict] = field(default_factory=list)
    qspace: list[dict] = field(default_factory=list)
    samplers: list[dict] = field(default_factory=list)
    timings: list[dict] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    slices: list[dict] = field(default_factory=list)


# ------------------------------------------------------------------------------------------- inputs


def load_bundles(bundles: Mapping[str, str | Path], device: str = "cpu") -> list[LoadedBundle]:
    """Load every ``name -> folder`` (:func:`bids_phydiff.synth.run.load_bundle`); a missing folder is
    :class:`NoInputError` (66), a corrupt one :class:`InputDataError` (65), each naming the method and the
    folder."""
    return [load_bundle(path, device, name, what=f"--model {name}={path}") for name, path in bundles.items()]


def fa_white_matter(reference: np.ndarray, bvals, bvecs, mask, threshold: float = FA_WM_THRESHOLD) -> np.ndarray:
    """``(X, Y, Z)`` bool: FA of the tensor fit of ``reference`` above ``threshold`` inside ``mask``."""
    fa = fit_dti(reference, bvals, bvecs, mask).fa
    return (fa > threshold) & (np.asarray(mask) > 0)


# -------------------------------------------------------------------------------------- computation


def evaluate(
    output_dir: str | Path,
    bundles: Mapping[str, str | Path],
    subjects: Sequence[str] = (),
    *,
    truth_dir: str | Path | None = None,
    sampler: SamplerConfig | None = None,
    seed: int = 0,
    batch_size: int = 64,
    device: str = "cpu",
    with_acquired: bool = False,
    with_baseline: bool = True,
    compare_samplers: Mapping[str, SamplerConfig] | None = None,
    compare_volumes_per_shell: int = 1,
    work_dir: str | Path | None = None,
) -> EvaluationResult:
    """Run the whole evaluation (see the module docstring) and return its rows.

    ``bundles``: ``{method name: bundle folder}`` (at least one; the first gives the baseline's ADC atlas
    and the grid). ``subjects``: labels (empty = every prepared subject on the bundle's grid).
    ``sampler``: default the app's (:func:`~bids_phydiff.synth.inputs.app_sampler`). ``compare_samplers``: ``{name: sampler}``
    run with the first bundle on ``compare_volumes_per_shell`` volumes of each shell (:mod:`.samplers`).
    """
    from ..synth.inputs import app_sampler
    from .truth_reference import noise_free_prepared, template_white_matter, truth_root

    if not bundles:
        raise NoInputError("no model bundle given (--model NAME=FOLDER)")
    sampler = sampler or app_sampler()
    if truth_dir is not None:
        truth_dir = truth_root(truth_dir)
    loaded = load_bundles(bundles, device)
    first = loaded[0]
    grid = first.bundle.grid
    runs = find_prepared(output_dir, tuple(subjects), space=grid.template,
                         res=first.bundle.metadata.get("res_label"))
    trained_on = _training_subjects(first.bundle.path)
    patches = {b.name: model_patch_grid(b.bundle) for b in loaded}
    patches.update({BASELINE: patches[first.name], TENSOR_BASELINE: patches[first.name], ACQUIRED: patches[first.name]})
    result = EvaluationResult(settings={
        "output_dir": str(output_dir),
        "bundles": {b.name: str(b.bundle.path) for b in loaded},
        "objectives": {b.name: b.bundle.model.config.objective for b in loaded},
        "subjects": sorted({r.subject for r in runs}),
        "runs": [str(r.dwi) for r in runs],
        "sampler": dataclasses.asdict(sampler),
        "seed": seed,
        "truth_dir": None if truth_dir is None else str(truth_dir),
        "white_matter": {
            FIBRE_REGION: f"FA > {FA_WM_THRESHOLD} of the {'noise-free truth' if truth_dir is not None else 'acquired data'}"
                          " inside the brain mask",
            **({TISSUE_REGION: "the template truth's white-matter label (tissue 3) inside the brain mask, "
                               "anisotropic or not"} if truth_dir is not None else {}),
        },
        "baseline_atlas": str(first.bundle.path / ADC_ATLAS_FILE),
    })
    for run in runs:
        if run.subject in trained_on:
            log.warning("sub-%s was a training subject of %s: its metrics are not held-out metrics",
                        run.subject, first.bundle.path)
        subject = load_subject(run)
        methods: dict[str, np.ndarray] = {}
        for b in loaded:
            log.info("%s: synthesising %d volumes with %s", run.prefix, subject.bvals.size, b.name)
            series, seconds = synthesise_acquired(b, subject, sampler, seed, batch_size)
            methods[b.name] = series
            result.timings.append({"subject": run.subject, "run": run.prefix, "method": b.name,
                                   "seconds": seconds, "volumes": int(subject.bvals.size)})
        if with_baseline:
            methods[BASELINE] = physics_baseline(subject.b0, subject.bvals, first.conditions.adc_atlas,
                                                 first.conditions.shells, mask=subject.mask)
            with_context = next((b for b in loaded if b.bundle.model.config.context != "none"), None)
            if with_context is not None:
                methods[TENSOR_BASELINE] = context_baseline(context_source(with_context, subject), subject.mask,
                                                            subject.bvals, subject.bvecs)
        if with_acquired:
            methods[ACQUIRED] = subject.dwi
        result.slices += figure_slices(run.prefix, methods, subject)
        references = {ACQUIRED: subject.dwi}
        if truth_dir is not None:
            references[TRUTH] = noise_free_prepared(run, truth_dir, work_dir)
        regions = {FIBRE_REGION: fa_white_matter(references.get(TRUTH, subject.dwi), subject.bvals, subject.bvecs,
                                                 subject.mask)}
        if truth_dir is not None:
            regions[TISSUE_REGION] = template_white_matter(run, truth_dir) & subject.mask
        for region, wm in regions.items():
            if not wm.any():
                raise InputDataError(f"{run.dwi}: the white-matter mask ({region}) is empty; cannot compare tensors")
        multi_shell = kurtosis_fittable(subject.bvals)
        for ref_name, reference in references.items():
            labels = {"subject": run.subject, "run": run.prefix, "reference": ref_name}
            result.volumes += metric_rows(methods, reference, subject.bvals, subject.mask, subject.scale, labels,
                                          patches)
            for region, wm in regions.items():
                result.dti += dti_rows(methods, reference, subject.bvals, subject.bvecs, wm,
                                       {**labels, "region": region})
                if multi_shell:
                    result.qspace += qspace_rows(methods, reference, subject.bvals, subject.bvecs, wm,
                                                 {**labels, "region": region})
        if compare_samplers:
            from .samplers import compare_samplers as run_comparison

            result.samplers += run_comparison(first, subject, references, compare_samplers, seed, batch_size,
                                              compare_volumes_per_shell)
    result.shells = summarise(result.volumes)
    return result


def figure_slices(run: str, methods: Mapping[str, np.ndarray], subject) -> list[dict]:
    """Per shell of the run: ``run``, ``shell``, ``volume`` (the shell's first), ``z`` (the middle brain
    slice), ``images`` (``acquired`` and every method, ``(X, Y)``) and ``mask`` (``(X, Y)``)."""
    mask = subject.mask
    z = int(np.median(np.nonzero(mask.any(axis=(0, 1)))[0])) if mask.any() else mask.shape[2] // 2
    out = []
    for shell in unique_shells(subject.bvals[subject.bvals > B0_THRESHOLD]):
        n = int(np.flatnonzero(np.abs(subject.bvals - shell) <= SHELL_TOLERANCE)[0])
        images = {ACQUIRED: subject.dwi[:, :, z, n], **{m: s[:, :, z, n] for m, s in methods.items() if m != ACQUIRED}}
        out.append({"run": run, "shell": float(shell), "volume": n, "z": z,
                    "images": {k: np.asarray(v, dtype=np.float32) for k, v in images.items()}, "mask": mask[:, :, z]})
    return out


def _training_subjects(bundle_path: Path) -> set[str]:
    import json

    info = Path(bundle_path) / TRAIN_JSON
    try:
        return set(json.loads(info.read_text())["subjects"]["train"])
    except (OSError, ValueError, KeyError, TypeError):
        return set()
