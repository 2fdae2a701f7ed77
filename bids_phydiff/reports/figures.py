"""Figures that let a person trust a registration: an image with an outline over it, in three planes.

All functions take arrays in one voxel grid ``(X, Y, Z)`` (RAS-ish orientation is not assumed: slices
are shown as stored, transposed so that the second axis points up) and write one SVG or PNG.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..atomic import atomic_path

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


def _save(plt, fig, out_path: str | Path, title: str) -> Path:
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
    return out_path


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
    return _save(plt, fig, out_path, title)


def plot_synthesis(rows: list[tuple[str, dict[str, np.ndarray]]], out_path: str | Path, title: str = "") -> Path:
    """One row per shell: 2-D slices (as stored, transposed so the second axis points up) under the column
    names ``acquired``, ``synthetic``, ``|error|`` and ``uncertainty`` that each row has. Acquired and
    synthetic share one grey window per row (the acquired image's); error and uncertainty share a hot one."""
    plt = _matplotlib()
    columns = [c for c in ("acquired", "synthetic", "|error|", "uncertainty") if any(c in r for _, r in rows)]
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(2.4 * len(columns), 2.5 * len(rows)), squeeze=False)
    for i, (label, panels) in enumerate(rows):
        # the acquired image sets the window when there is one: a poor synthesis then shows as saturated
        grey = _window(np.asarray(panels.get("acquired", panels.get("synthetic"))))
        hot = [panels[c] for c in ("|error|", "uncertainty") if c in panels]
        hot_hi = max((float(np.percentile(h, 99.5)) for h in hot), default=1.0) or 1.0
        for j, column in enumerate(columns):
            ax = axes[i, j]
            ax.set_axis_off()
            if column not in panels:
                continue
            image = np.asarray(panels[column], dtype=np.float32).T
            if column in ("acquired", "synthetic"):
                ax.imshow(image, cmap="gray", vmin=grey[0], vmax=grey[1], origin="lower")
            else:
                ax.imshow(image, cmap="hot", vmin=0, vmax=hot_hi, origin="lower")
            if i == 0:
                ax.set_title(column, fontsize=9)
            if j == 0:
                ax.text(-0.05, 0.5, label, transform=ax.transAxes, rotation=90, va="center", ha="right", fontsize=9)
    return _save(plt, fig, out_path, title)


def plot_motion(params: np.ndarray, fd: np.ndarray, fd_threshold: float, out_path: str | Path,
                title: str = "") -> Path:
    """Three stacked traces over the volumes: translations (mm), rotations (degrees) from ``params``
    ``(N, 6)`` (mm, radians), and framewise displacement ``fd`` ``(N,)`` mm with ``fd_threshold`` drawn."""
    plt = _matplotlib()
    params = np.asarray(params, dtype=np.float64).reshape(-1, 6)
    volumes = np.arange(len(params))
    fig, axes = plt.subplots(3, 1, figsize=(8, 5.5), sharex=True)
    for k, axis in enumerate("xyz"):
        axes[0].plot(volumes, params[:, k], label=f"trans_{axis}")
        axes[1].plot(volumes, np.degrees(params[:, 3 + k]), label=f"rot_{axis}")
    axes[0].set_ylabel("mm")
    axes[1].set_ylabel("degrees")
    axes[2].plot(volumes, fd, color="black", label="framewise displacement")
    axes[2].axhline(fd_threshold, color="red", linestyle="--", linewidth=0.8, label=f"threshold {fd_threshold:g} mm")
    axes[2].set_ylabel("FD, mm")
    axes[2].set_xlabel("volume")
    for ax in axes:
        ax.legend(fontsize=7, loc="upper right", ncol=3)
        ax.grid(alpha=0.3)
    return _save(plt, fig, out_path, title)
