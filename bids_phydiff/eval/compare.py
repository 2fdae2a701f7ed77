"""Several methods' series against one reference: per-volume rows, per-shell summaries, DTI rows.

A *method* is a name and a series ``(X, Y, Z, N)`` in signal units (a model's synthesis, the physics
baseline, the acquired data). Used by the synthesis metrics of the participant level and by the evaluation
command, so both tables are computed the same way.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from .dti import dti_agreement
from .metrics import series_metrics, summarise_by_shell

__all__ = ["dti_rows", "metric_rows", "summarise"]


def metric_rows(methods: Mapping[str, np.ndarray], reference: np.ndarray, bvals, mask, scale: float,
                labels: Mapping | None = None) -> list[dict]:
    """Per-volume rows (diffusion-weighted volumes) of every method against ``reference``, each starting
    with ``labels`` (e.g. subject, reference) and ``method``; metrics as :func:`.metrics.series_metrics`
    (``scale``: the b0 scale, the data range of the masked PSNR/SSIM)."""
    rows = []
    for name, series in methods.items():
        for row in series_metrics(series, reference, bvals, mask, scale=scale):
            rows.append({**(labels or {}), "method": name, **row})
    return rows


def dti_rows(methods: Mapping[str, np.ndarray], reference: np.ndarray, bvals, bvecs, wm,
             labels: Mapping | None = None) -> list[dict]:
    """One row per method: ``labels``, ``method`` and :func:`.dti.dti_agreement` of its full series with
    ``reference`` in ``wm``."""
    return [{**(labels or {}), "method": name, **dti_agreement(series, reference, bvals, bvecs, wm)}
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
