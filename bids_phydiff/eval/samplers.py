"""Sampler quality against sampler time: the same bundle, volumes and seed through several samplers.

:data:`DEFAULT_SAMPLERS`: ancestral DDPM (every step from the start: 1000 from noise, 800 from SDEdit 0.8),
DDIM 50 and DDIM 20 (the app's eta), all from the same start (``strength``: SDEdit from the noised b0, or 1.0 = pure noise) with the
app's clamp of the predicted x0. Each runs on ``per_shell`` volumes of every shell of one prepared run,
every brain slice; the table reports the wall time per synthesised slice and per volume, the speed-up over
the first sampler, and the masked SSIM / PSNR (signal units) and paper SSIM against each reference, with
the SSIM difference to the first sampler in points (SSIM x 100).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ..config import SAMPLER_STRENGTH
from ..model.sampling import SamplerConfig, timesteps
from ..prep.gradients import B0_THRESHOLD, shell_index, unique_shells
from .metrics import series_metrics

__all__ = ["DEFAULT_SAMPLERS", "compare_samplers", "default_samplers", "pick_volumes"]


def default_samplers(strength: float = SAMPLER_STRENGTH) -> dict[str, SamplerConfig]:
    """``{"ddpm-<n>": ..., "ddim-50": ..., "ddim-20": ...}`` from the same start (see the module docstring);
    ``n`` = the DDPM's model evaluations (1000 from pure noise, 800 from SDEdit 0.8)."""
    from ..synth.inputs import app_sampler

    ddpm = app_sampler("ddpm", 1000, strength)
    return {f"ddpm-{len(timesteps(ddpm, 1000))}": ddpm, "ddim-50": app_sampler("ddim", 50, strength),
            "ddim-20": app_sampler("ddim", 20, strength)}


DEFAULT_SAMPLERS = default_samplers()


def pick_volumes(bvals, per_shell: int = 1, b0_threshold: float = B0_THRESHOLD) -> np.ndarray:
    """Indices of the first ``per_shell`` diffusion-weighted volumes of every shell, ascending."""
    bvals = np.asarray(bvals, dtype=np.float64)
    dw = bvals > b0_threshold
    shells = unique_shells(bvals[dw])
    which = shell_index(bvals, shells)
    picked = []
    for s in range(shells.size):
        picked += np.flatnonzero(dw & (which == s))[:per_shell].tolist()
    return np.array(sorted(picked), dtype=int)


def compare_samplers(loaded, subject, references: Mapping[str, np.ndarray], samplers: Mapping[str, SamplerConfig],
                     seed: int = 0, batch_size: int = 64, per_shell: int = 1) -> list[dict]:
    """One row per (reference, sampler) for the bundle ``loaded`` (:class:`~bids_phydiff.synth.run.LoadedBundle`)
    on ``subject`` (:class:`~bids_phydiff.synth.run.SubjectData`); ``references`` ``{name: (X, Y, Z, N)}``."""
    from ..synth.run import model_evaluations, synthesise_acquired

    volumes = pick_volumes(subject.bvals, per_shell)
    slices = int(np.count_nonzero(subject.mask.any(axis=(0, 1))))
    runs = {}
    for name, sampler in samplers.items():
        series, seconds = synthesise_acquired(loaded, subject, sampler, seed, batch_size, volumes)
        runs[name] = (series, seconds, model_evaluations(loaded.bundle, sampler))
    rows = []
    for ref_name, reference in references.items():
        first_ssim = first_seconds = None
        for name, (series, seconds, evaluations) in runs.items():
            metrics = series_metrics(series, reference[..., volumes], subject.bvals[volumes], subject.mask,
                                     scale=subject.scale)
            ssim = float(np.mean([m["ssim"] for m in metrics]))
            if first_ssim is None:
                first_ssim, first_seconds = ssim, seconds
            rows.append({
                "subject": subject.run.subject,
                "reference": ref_name,
                "method": loaded.name,
                "sampler": name,
                "model_evaluations": evaluations,
                "volumes": int(volumes.size),
                "slices_per_volume": slices,
                "seconds": seconds,
                "seconds_per_slice": seconds / max(1, volumes.size * slices),
                "seconds_per_volume": seconds / max(1, volumes.size),
                "speedup": first_seconds / seconds if seconds > 0 else float("nan"),
                "ssim": ssim,
                "ssim_points_vs_first": 100.0 * (ssim - first_ssim),
                "psnr": float(np.mean([m["psnr"] for m in metrics])),
                "paper_ssim": float(np.mean([m["paper_ssim"] for m in metrics])),
            })
    return rows
