"""Several methods' series against one reference: per-volume rows, per-shell summaries, DTI rows.

A *method* is a name and a series ``(X, Y, Z, N)`` in signal units (a model's synthesis, the physics
baseline, the acquired data). Used by the synthesis metrics of the participant level and by the evaluation
command, so both tables are computed the same way. Each volume row carries the image metrics
(:func:`.metrics.series_metrics`) and the seam and sharpness scores (:mod:`.fidelity`), which need the
model's patch grid (:func:`model_patch_grid`).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from .dti import dti_agreement
from .fidelity import PatchGrid, seam_score, sharpness_score
from .kurtosis import qspace_agreement, qspace_maps
from .metrics import series_metrics, summarise_by_shell

__all__ = ["dti_rows", "metric_rows", "model_patch_grid", "qspace_rows", "summarise"]


def model_patch_grid(bundle) -> PatchGrid:
    """The patch grid of a :class:`bids_phydiff.model.bundle.Bundle`'s model on its slices: the backbone's
    ``patch_size`` and the in-plane offsets of the centred padding (:func:`bids_phydiff.synth.grid.slice_grid`)."""
    from ..synth.grid import slice_grid

    return PatchGrid.of_model(bundle.model.config.backbone.patch_size, slice_grid(bundle.grid, bundle.model))


def metric_rows(methods: Mapping[str, np.ndarray], reference: np.ndarray, bvals, mask, scale: float,
                labels: Mapping | None = None,
                patches: PatchGrid | Mapping[str, PatchGrid] | None = None) -> list[dict]:
    """Per-volume rows (diffusion-weighted volumes) of every method against ``reference``, each starting
    with ``labels`` (e.g. subject, reference) and ``method``; metrics as :func:`.metrics.series_metrics`
    (``scale``: the b0 scale, the data range of the masked PSNR/SSIM), then ``seam`` and ``sharpness``
    (:mod:`.fidelity`, in ``mask``). ``patches``: the model's patch grid (one for every method, or one per
    method name); a method without one has ``seam`` NaN."""
    rows = []
    for name, series in methods.items():
        grid = patches.get(name) if isinstance(patches, Mapping) else patches
        for row in series_metrics(series, reference, bvals, mask, scale=scale):
            n = row["volume"]
            row["seam"] = math.nan if grid is None else seam_score(series[..., n], reference[..., n], grid, mask)
            row["sharpness"] = sharpness_score(series[..., n], reference[..., n], mask)
            rows.append({**(labels or {}), "method": name, **row})
    return rows


def dti_rows(methods: Mapping[str, np.ndarray], reference: np.ndarray, bvals, bvecs, wm,
             labels: Mapping | None = None) -> list[dict]:
    """One row per method: ``labels``, ``method`` and :func:`.dti.dti_agreement` of its full series with
    ``reference`` in ``wm``."""
    return [{**(labels or {}), "method": name, **dti_agreement(series, reference, bvals, bvecs, wm)}
            for name, series in methods.items()]


def qspace_rows(methods: Mapping[str, np.ndarray], reference: np.ndarray, bvals, bvecs, region,
                labels: Mapping | None = None) -> list[dict]:
    """One row per method: ``labels``, ``method`` and :func:`.kurtosis.qspace_agreement` of its series against
    ``reference`` in ``region`` (mean kurtosis, per-shell direction angles); for a multi-shell scheme. The
    reference is fitted once."""
    ref = qspace_maps(reference, bvals, bvecs, region)
    return [{**(labels or {}), "method": name, **qspace_agreement(qspace_maps(series, bvals, bvecs, region), ref)}
            for name, series in methods.items()]


def summarise(volume_rows: Sequence[Mapping], keys: Sequence[str] = ("reference", "method")) -> list[dict]:
    """Per (``keys``..., shell) the mean and std over volumes (:func:`.metrics.summarise_by_shell`), in the
    order the key tuples first appear."""
    groups: dict[tuple, list] = {}
    for row in volume_rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    out = []
    for key, rows in groups.items():
        with np.errstate(invalid="ignore"):  # a perfect method has PSNR inf: its std is NaN ("n/a")
            summaries = summarise_by_shell(rows)
        for summary in summaries:
            out.append({**dict(zip(keys, key)), **summary})
    return out
