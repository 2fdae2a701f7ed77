"""Figures that let a person trust a registration: an image with an outline over it, in three planes.

All functions take arrays in one voxel grid ``(X, Y, Z)`` (RAS-ish orientation is not assumed: slices
are shown as stored, transposed so that the second axis points up) and write one SVG or PNG.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

VIEWS = ("sagittal", "coronal", "axial")


def _matplotlib():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _slices(shape: tuple[int, ...], view: int, count: int) -> list[int]:
    n = shape[view]
    return [int(round(p)) for p in np.linspace(0.25 * (n - 1), 0.75 * (n - 1), count)]


def _take(volume: np.ndarray, view: int, index: int) -> np.ndarray:
    return np.take(volume, index, axis=view).T  # (rows = second remaining axis) so "up" is up


def _window(volume: np.ndarray) -> tuple[float, float]:
    finite = volume[np.isfinite(volume)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, [1, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1)


def plot_overlay(
    background: np.ndarray,
    out_path: str | Path,
    contour: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    title: str = "",
    slices_per_view: int = 4,
) -> Path:
    """``background`` in grey; the edges of ``contour`` (e.g. the template or a tissue boundary) in
    colour lines; ``mask`` as a translucent fill. Three rows (sagittal, coronal, axial)."""
    plt = _matplotlib()
    background = np.asarray(background, dtype=np.float32)
    lo, hi = _window(background)
    fig, axes = plt.subplots(3, slices_per_view, figsize=(2.2 * slices_per_view, 6.9), squeeze=False)
    contour_levels = None
    if contour is not None:
        contour = np.asarray(contour, dtype=np.float32)
        clo, chi = _window(contour)
        contour_levels = [clo + 0.35 * (chi - clo)]
    for row, view in enumerate(range(3)):
        for col, index in enumerate(_slices(background.shape, view, slices_per_view)):
            ax = axes[row, col]
            ax.imshow(_take(background, view, index), cmap="gray", vmin=lo, vmax=hi, origin="lower")
            if mask is not None:
                m = _take(np.asarray(mask, dtype=np.float32), view, index)
                ax.imshow(np.ma.masked_where(m < 0.5, m), cmap="autumn", alpha=0.35, origin="lower",
                          vmin=0, vmax=1)
            if contour is not None:
                c = _take(contour, view, index)
                if np.ptp(c) > 0:
                    ax.contour(c, levels=contour_levels, colors="#00e0ff", linewidths=0.7, origin="lower")
            ax.set_axis_off()
            if col == 0:
                ax.set_title(VIEWS[view], fontsize=8, loc="left")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=90)
    plt.close(fig)
    return out_path
