"""Image similarity metrics: the paper's protocol and masked metrics in signal units.

Two families, never mixed:

1. **Paper protocol** (reference/official-code-notes.md, "Evaluation protocol"): each 2-D axial slice of
   the prediction and of the reference is min-max scaled *on its own* to [0, 255]; SSIM (7x7 Gaussian
   window, sigma 1.5, truncated to the window and renormalised, as MONAI's ``SSIMMetric(win_size=7)``) and
   PSNR (data range 255) per slice, no mask, averaged over slices. Slices whose reference is constant
   (outside the head) have no min-max and are left out. This destroys S_b / S_0 and is offered only to
   compare with published numbers. The official code padded slices to 256x256 first; pass padded
   arrays (``SliceGrid.pad``) to reproduce that exactly.
2. **Masked, signal units**: PSNR with data range = the b0 scale (99.5th percentile of the b0 in the mask,
   DESIGN.md section 4) and the MSE over mask voxels; SSIM map of 2-D axial slices (default 7x7 uniform
   window, as scikit-image's default) averaged over mask voxels; NRMSE = RMSE in the mask / RMS of the
   reference in the mask (scikit-image's ``normalization="euclidean"``). Both images are set to 0 outside
   the mask before the SSIM map is computed, so nothing outside the mask enters any masked metric.

SSIM conventions are scikit-image's ``structural_similarity`` (Wang et al. 2004 with its defaults): K1 0.01,
K2 0.03, C = (K * data_range)^2, local moments by ``scipy.ndimage`` filters with ``mode="reflect"``,
sample covariance (factor NP / (NP - 1), NP = win_size ** number of windowed axes), and the mean taken
over the map without the ``(win_size - 1) // 2`` border where the window reaches the padding. With a
uniform window this equals scikit-image exactly; with a Gaussian window it equals scikit-image's
``gaussian_weights=True`` whenever scikit-image's fixed truncation (3.5 sigma) gives the same window, i.e.
``int(3.5 * sigma + 0.5) == (win_size - 1) // 2`` (e.g. win 7, sigma 6/7); for sigma 1.5 scikit-image
would use an 11x11 window, MONAI and this module a 7x7 one.

Everything is computed in float64 with numpy and scipy.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage

from ..atomic import atomic_path
from ..prep.gradients import B0_THRESHOLD, shell_index, unique_shells

__all__ = [
    "FIDELITY_METRICS",
    "METRICS",
    "PAPER_SIGMA",
    "masked_metrics",
    "minmax_255",
    "nrmse",
    "paper_metrics",
    "psnr",
    "series_metrics",
    "ssim",
    "ssim_map",
    "summarise_by_shell",
    "write_tsv",
]

PAPER_SIGMA = 1.5
"""Gaussian sigma of the paper protocol's SSIM window (MONAI's default)."""

METRICS = ("paper_psnr", "paper_ssim", "psnr", "ssim", "nrmse")
"""Metric columns of :func:`series_metrics` rows."""

FIDELITY_METRICS = ("seam", "sharpness")
"""Columns that :func:`bids_phydiff.eval.compare.metric_rows` adds (:mod:`.fidelity`); summarised when present."""


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    return a, b


def _mask(mask, shape) -> np.ndarray | None:
    if mask is None:
        return None
    mask = np.asarray(mask) > 0
    if mask.shape != shape:
        raise ValueError(f"mask {mask.shape} does not match the images {shape}")
    if not mask.any():
        raise ValueError("the mask is empty")
    return mask


# -------------------------------------------------------------------------------------------- basic


def psnr(reference, test, *, data_range: float, mask=None) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range^2 / MSE)``; MSE over ``mask`` voxels when given.

    ``inf`` when the images agree exactly (as scikit-image).
    """
    ref, out = _pair(reference, test)
    if not data_range > 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    m = _mask(mask, ref.shape)
    diff = (ref - out) if m is None else (ref - out)[m]
    mse = float(np.mean(diff * diff))
    if mse == 0.0:
        return math.inf
    return float(10.0 * np.log10(data_range**2 / mse))


def nrmse(reference, test, *, mask=None) -> float:
    """``sqrt(mean((ref - test)^2)) / sqrt(mean(ref^2))`` over ``mask`` voxels (all when None)."""
    ref, out = _pair(reference, test)
    m = _mask(mask, ref.shape)
    if m is not None:
        ref, out = ref[m], out[m]
    denom = math.sqrt(float(np.mean(ref * ref)))
    if denom == 0.0:
        raise ValueError("the reference is zero: NRMSE is undefined")
    return math.sqrt(float(np.mean((ref - out) ** 2))) / denom


def _axes(ndim: int, axes: Sequence[int] | None) -> tuple[int, ...]:
    if axes is None:
        return tuple(range(ndim))
    axes = tuple(sorted({int(a) % ndim for a in axes}))
    if not axes:
        raise ValueError("at least one windowed axis is needed")
    return axes


def _filter(image: np.ndarray, axes: tuple[int, ...], win_size: int, sigma: float | None) -> np.ndarray:
    radius = (win_size - 1) // 2
    if sigma is None:
        size = [win_size if ax in axes else 1 for ax in range(image.ndim)]
        return ndimage.uniform_filter(image, size=size, mode="reflect")
    sigmas = [sigma if ax in axes else 0.0 for ax in range(image.ndim)]
    return ndimage.gaussian_filter(image, sigma=sigmas, truncate=radius / sigma, mode="reflect")


def ssim_map(
    a,
    b,
    *,
    data_range: float,
    win_size: int = 7,
    gaussian_sigma: float | None = None,
    axes: Sequence[int] | None = None,
    k1: float = 0.01,
    k2: float = 0.03,
    sample_covariance: bool = True,
) -> np.ndarray:
    """The local SSIM map (same shape as the images), float64.

    ``axes``: the axes the window spans (None = all, as scikit-image on an n-D array; ``(0, 1)`` on an
    ``(X, Y, Z)`` volume = 2-D SSIM of each axial slice). ``gaussian_sigma``: None = uniform
    ``win_size``-wide window; else a Gaussian of that sigma truncated to ``win_size`` taps.
    """
    x, y = _pair(a, b)
    axes = _axes(x.ndim, axes)
    if win_size < 1 or win_size % 2 == 0:
        raise ValueError(f"win_size must be odd and positive, got {win_size}")
    if any(x.shape[ax] < win_size for ax in axes):
        raise ValueError(f"images {x.shape} are smaller than the {win_size}-wide window on axes {axes}")
    if gaussian_sigma is not None and not gaussian_sigma > 0:
        raise ValueError(f"gaussian_sigma must be positive, got {gaussian_sigma}")
    if not data_range > 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    npts = win_size ** len(axes)
    cov_norm = npts / (npts - 1) if sample_covariance and npts > 1 else 1.0
    ux = _filter(x, axes, win_size, gaussian_sigma)
    uy = _filter(y, axes, win_size, gaussian_sigma)
    uxx = _filter(x * x, axes, win_size, gaussian_sigma)
    uyy = _filter(y * y, axes, win_size, gaussian_sigma)
    uxy = _filter(x * y, axes, win_size, gaussian_sigma)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))


def _interior(shape: tuple[int, ...], axes: tuple[int, ...], win_size: int) -> np.ndarray:
    """Boolean array: voxels at least ``(win_size - 1) // 2`` from the border along the windowed axes."""
    pad = (win_size - 1) // 2
    inside = np.zeros(shape, dtype=bool)
    index = tuple(slice(pad, n - pad) if ax in axes else slice(None) for ax, n in enumerate(shape))
    inside[index] = True
    return inside


def ssim(
    a,
    b,
    *,
    data_range: float,
    mask=None,
    win_size: int = 7,
    gaussian_sigma: float | None = None,
    axes: Sequence[int] | None = None,
    **kwargs,
) -> float:
    """Mean SSIM. Without ``mask``: the mean of :func:`ssim_map` without its border (scikit-image's value).

    With ``mask``: both images are set to 0 outside the mask, then the map is averaged over the mask
    voxels that are not in the border (``mask=None`` and an all-true mask give the same number).
    """
    x, y = _pair(a, b)
    m = _mask(mask, x.shape)
    if m is not None:
        x = np.where(m, x, 0.0)
        y = np.where(m, y, 0.0)
    axes_t = _axes(x.ndim, axes)
    smap = ssim_map(
        x, y, data_range=data_range, win_size=win_size, gaussian_sigma=gaussian_sigma, axes=axes_t, **kwargs
    )
    keep = _interior(x.shape, axes_t, win_size)
    if m is not None:
        keep &= m
        if not keep.any():
            raise ValueError("the mask lies entirely in the SSIM border")
    return float(smap[keep].mean(dtype=np.float64))


# ------------------------------------------------------------------------------------ paper protocol


def minmax_255(image) -> np.ndarray:
    """``image`` min-max scaled to [0, 255] (float64); a constant image becomes 0."""
    image = np.asarray(image, dtype=np.float64)
    low, high = float(image.min()), float(image.max())
    if high <= low:
        return np.zeros_like(image)
    return (image - low) * (255.0 / (high - low))


def paper_metrics(
    prediction,
    reference,
    *,
    slice_axis: int = 2,
    win_size: int = 7,
    gaussian_sigma: float | None = PAPER_SIGMA,
) -> dict[str, float]:
    """Paper protocol over the 2-D slices along ``slice_axis`` of ``(X, Y, Z)`` volumes (or one 2-D slice).

    Returns ``{"paper_psnr", "paper_ssim", "slices"}``: means over slices whose reference is not constant
    (NaN and 0 slices when there are none).
    """
    pred, ref = _pair(prediction, reference)
    if pred.ndim == 2:
        pred, ref, slice_axis = pred[..., None], ref[..., None], 2
    if pred.ndim != 3:
        raise ValueError(f"paper metrics need 2-D slices or 3-D volumes, got {pred.ndim}-D")
    pred = np.moveaxis(pred, slice_axis, -1)
    ref = np.moveaxis(ref, slice_axis, -1)
    psnrs, ssims = [], []
    for z in range(ref.shape[-1]):
        r = ref[..., z]
        if r.max() <= r.min():
            continue
        r255, p255 = minmax_255(r), minmax_255(pred[..., z])
        psnrs.append(psnr(r255, p255, data_range=255.0))
        ssims.append(ssim(r255, p255, data_range=255.0, win_size=win_size, gaussian_sigma=gaussian_sigma))
    if not psnrs:
        return {"paper_psnr": math.nan, "paper_ssim": math.nan, "slices": 0}
    return {"paper_psnr": float(np.mean(psnrs)), "paper_ssim": float(np.mean(ssims)), "slices": len(psnrs)}


# ------------------------------------------------------------------------------------ masked metrics


def masked_metrics(
    prediction,
    reference,
    mask,
    *,
    scale: float,
    win_size: int = 7,
    gaussian_sigma: float | None = None,
    slice_axes: Sequence[int] = (0, 1),
) -> dict[str, float]:
    """Masked metrics in signal units of ``(X, Y, Z)`` volumes: ``{"psnr", "ssim", "nrmse"}``.

    ``scale``: the PSNR and SSIM data range, the subject's b0 scale (99.5th percentile of the b0 in the
    mask, :class:`~bids_phydiff.train.normalise.Normaliser`). SSIM is 2-D over ``slice_axes`` (axial slices).
    """
    pred, ref = _pair(prediction, reference)
    m = _mask(mask, ref.shape)
    return {
        "psnr": psnr(ref, pred, data_range=scale, mask=m),
        "ssim": ssim(ref, pred, data_range=scale, mask=m, win_size=win_size, gaussian_sigma=gaussian_sigma,
                     axes=slice_axes if ref.ndim == 3 else None),
        "nrmse": nrmse(ref, pred, mask=m),
    }


# ------------------------------------------------------------------------------- series and shells


def series_metrics(
    prediction,
    reference,
    bvals,
    mask,
    *,
    scale: float,
    volumes: Iterable[int] | None = None,
    include_b0: bool = False,
    b0_threshold: float = B0_THRESHOLD,
    shell_tolerance: float = 100.0,
) -> list[dict]:
    """One row per volume of ``(X, Y, Z, N)`` series: ``volume``, ``bval``, ``shell`` (nominal b-value, 0 for
    b0) and the :data:`METRICS` (paper protocol without mask, masked in signal units with ``scale``).

    b0 volumes are left out unless ``include_b0`` (synthesis copies them); ``volumes`` picks indices.
    """
    pred, ref = _pair(prediction, reference)
    if pred.ndim != 4:
        raise ValueError(f"series must be (X, Y, Z, N), got shape {pred.shape}")
    bvals = np.asarray(bvals, dtype=np.float64).reshape(-1)
    if bvals.size != pred.shape[3]:
        raise ValueError(f"{bvals.size} b-values for {pred.shape[3]} volumes")
    m = _mask(mask, pred.shape[:3])
    dw = bvals > b0_threshold
    shells = unique_shells(bvals[dw], shell_tolerance)
    which = shell_index(bvals, shells, shell_tolerance)
    chosen = range(bvals.size) if volumes is None else [int(v) for v in volumes]
    rows = []
    for n in chosen:
        if not (include_b0 or dw[n]):
            continue
        shell = float(shells[which[n]]) if dw[n] and which[n] >= 0 else 0.0
        row = {"volume": n, "bval": float(bvals[n]), "shell": shell}
        paper = paper_metrics(pred[..., n], ref[..., n])
        row["paper_psnr"], row["paper_ssim"] = paper["paper_psnr"], paper["paper_ssim"]
        row.update(masked_metrics(pred[..., n], ref[..., n], m, scale=scale))
        rows.append(row)
    return rows


def summarise_by_shell(rows: Sequence[Mapping], metrics: Sequence[str] | None = None) -> list[dict]:
    """Per shell (ascending), then ``"all"``: ``shell``, ``volumes`` and ``<metric>_mean``/``<metric>_std``
    (population std, ddof 0) of ``rows`` from :func:`series_metrics`. ``metrics``: default :data:`METRICS`
    and those of :data:`FIDELITY_METRICS` that the rows carry."""
    if metrics is None:
        metrics = METRICS + tuple(m for m in FIDELITY_METRICS if rows and m in rows[0])
    groups: dict = {}
    for row in rows:
        groups.setdefault(row["shell"], []).append(row)
    out = []
    keys = sorted(groups) + (["all"] if rows else [])
    for key in keys:
        members = list(rows) if key == "all" else groups[key]
        summary = {"shell": key, "volumes": len(members)}
        for metric in metrics:
            values = np.array([float(r[metric]) for r in members], dtype=np.float64)
            summary[f"{metric}_mean"] = float(values.mean())
            summary[f"{metric}_std"] = float(values.std())
        out.append(summary)
    return out


def _format(value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.6g}"
    return str(value)


def write_tsv(rows: Sequence[Mapping], path: str | os.PathLike) -> Path:
    """Write ``rows`` as a tab-separated table (columns of the first row, floats to 6 significant digits,
    NaN as ``n/a`` as in BIDS), through a temporary file renamed into place."""
    path = Path(path)
    if not rows:
        raise ValueError(f"{path}: no rows to write")
    columns = list(rows[0])
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_format(row.get(c, math.nan)) for c in columns])
    return path
