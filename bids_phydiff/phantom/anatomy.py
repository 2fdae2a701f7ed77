"""The common phantom anatomy, defined analytically in template world coordinates (RAS+ mm).

A head-sized ellipsoid holds an outer CSF layer, a grey-matter rim and white matter inside,
with two lateral ventricles (CSF). Five curved fibre bundles run through the white matter and
cross each other: a left-right commissural arc (``CC``), two curved anterior-posterior bundles
(``SLF_L``, ``SLF_R``) and two curved inferior-superior bundles (``CST_L``, ``CST_R``).

Partial volume: every boundary is a linear ramp one voxel wide (``width`` mm) across the
approximate signed distance to the surface, so a voxel cut by a plane gets about the volume
fraction on each side. Tissue fractions are ordered ``TISSUES`` (background, CSF, GM, WM).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

log = logging.getLogger(__name__)

TISSUES = ("background", "CSF", "GM", "WM")
"""Order of tissue fractions; also the tissue label values 0..3 of label maps."""

HEAD_SEMI_AXES = (58.0, 70.0, 52.0)
"""Semi-axes (mm, x/y/z) of the inner skull surface: a 116 x 140 x 104 mm brain."""

CSF_THICKNESS = 4.0
"""Outer CSF layer (mm)."""

GM_THICKNESS = 6.0
"""Cortical rim (mm)."""

VENTRICLES = (((-8.0, -4.0, -8.0), (5.0, 22.0, 8.0)), ((8.0, -4.0, -8.0), (5.0, 22.0, 8.0)))
"""Lateral ventricles: (centre, semi-axes) in mm."""

_CURVE_SAMPLES = 600


@dataclass(frozen=True)
class Bundle:
    """A fibre bundle: a tube of ``radius`` mm around a centreline ``points`` ``(P, 3)`` (mm)."""

    name: str
    points: np.ndarray
    radius: float

    @property
    def tangents(self) -> np.ndarray:
        """Unit tangents ``(P, 3)`` of the centreline (sign arbitrary: fibres are axial)."""
        t = np.gradient(self.points, axis=0)
        return t / np.linalg.norm(t, axis=1, keepdims=True)


def _curve(x, y, z) -> np.ndarray:
    return np.stack(np.broadcast_arrays(x, y, z), axis=1).astype(np.float64)


def default_bundles() -> tuple[Bundle, ...]:
    """The five bundles of the phantom (centrelines in template world mm)."""
    t = np.linspace(0.0, 1.0, _CURVE_SAMPLES)
    bundles = []
    # commissural arc: left to right, rising laterally (U shape in the coronal plane)
    x = -36.0 + 72.0 * t
    bundles.append(Bundle("CC", _curve(x, -2.0 + 0.003 * x**2, 10.0 + 0.01 * x**2), 8.0))
    # anterior-posterior arches, bowed outwards, crossing the arc near x = +-25
    y = -50.0 + 98.0 * t
    for name, side in (("SLF_L", -1.0), ("SLF_R", 1.0)):
        x = side * (22.0 + 3.0 * np.sin(np.pi * t))
        bundles.append(Bundle(name, _curve(x, y, -2.0 + 17.0 * (1.0 - (y / 52.0) ** 2)), 6.0))
    # inferior-superior bundles fanning laterally as they rise, crossing the arches near z = +13
    z = -38.0 + 70.0 * t
    for name, side in (("CST_L", -1.0), ("CST_R", 1.0)):
        x = side * (17.0 + 8.0 * ((z + 38.0) / 70.0) ** 2)
        bundles.append(Bundle(name, _curve(x, -16.0 - 0.002 * (z + 38.0) ** 2, z), 6.0))
    return tuple(bundles)


BUNDLES = default_bundles()
BUNDLE_NAMES = tuple(b.name for b in BUNDLES)


@dataclass(frozen=True)
class AnatomySample:
    """The anatomy at ``V`` points.

    ``tissue`` ``(V, 4)``: volume fractions of background, CSF, GM, WM (sum 1).
    ``bundle`` ``(V, K)``: volume fraction of the voxel that is white matter of bundle k
    (sum over k <= WM fraction; where tubes overlap the WM is shared between them).
    ``tube`` ``(V, K)``: fraction of the voxel inside the tube of bundle k (overlapping tubes each
    count fully; outside white matter too).
    ``tangents`` ``(V, K, 3)``: unit fibre direction of bundle k in template world (zero where absent).
    """

    tissue: np.ndarray
    bundle: np.ndarray
    tube: np.ndarray
    tangents: np.ndarray

    def tract_probability(self) -> np.ndarray:
        """``(V, K)`` in [0, 1]: how much of the voxel is white matter inside tract k (tracts overlap)."""
        return self.tube * self.tissue[:, 3:4]


def _ramp(signed_distance: np.ndarray, width: float) -> np.ndarray:
    """Inside fraction of a voxel of edge ``width`` whose centre is ``signed_distance`` outside a surface."""
    return np.clip(0.5 - signed_distance / width, 0.0, 1.0)


def _ellipsoid_distance(points: np.ndarray, centre, semi_axes) -> np.ndarray:
    """First-order signed distance (mm, positive outside) to an axis-aligned ellipsoid surface."""
    q2 = np.zeros(len(points))
    g2 = np.zeros(len(points))
    for axis in range(3):
        rel = points[:, axis] - float(np.broadcast_to(centre, 3)[axis])
        a = float(semi_axes[axis])
        q2 += (rel / a) ** 2
        g2 += (rel / (a * a)) ** 2
    q, grad = np.sqrt(q2), np.sqrt(g2)
    # (q - 1) / |grad q| with |grad q| = grad / q; q / grad lies in [min(a), max(a)], 0/0 at the centre
    scale = np.divide(q, grad, out=np.full_like(q, float(np.min(semi_axes))), where=grad > 0)
    return (q - 1.0) * scale


def tissue_fractions(points: np.ndarray, width: float) -> np.ndarray:
    """Tissue volume fractions ``(V, 4)`` (background, CSF, GM, WM) at template points ``(V, 3)`` mm."""
    head = np.asarray(HEAD_SEMI_AXES)
    out = np.zeros((len(points), len(TISSUES)))
    inside_head = _ramp(_ellipsoid_distance(points, 0.0, head), width)
    out[:, 0] = 1.0 - inside_head
    idx = np.flatnonzero(inside_head > 0)
    pts, inside_head = points[idx], inside_head[idx]
    inside_brain = _ramp(_ellipsoid_distance(pts, 0.0, head - CSF_THICKNESS), width)
    inside_wm = _ramp(_ellipsoid_distance(pts, 0.0, head - CSF_THICKNESS - GM_THICKNESS), width)
    ventricle = np.zeros(len(pts))
    for centre, axes in VENTRICLES:
        ventricle = np.maximum(ventricle, _ramp(_ellipsoid_distance(pts, centre, axes), width))
    # nested surfaces: the ramps are ordered for surfaces further apart than one voxel; clip anyway
    brain = np.minimum(inside_brain, inside_head)
    core = np.minimum(inside_wm, brain)
    out[idx, 1] = (inside_head - brain) + core * ventricle
    out[idx, 2] = brain - core
    out[idx, 3] = core * (1.0 - ventricle)
    return out


def evaluate(points: np.ndarray, width: float, bundles: tuple[Bundle, ...] = BUNDLES) -> AnatomySample:
    """Sample the anatomy at template world points ``(V, 3)`` mm for voxels of edge ``width`` mm."""
    points = np.asarray(points, dtype=np.float64)
    tissue = tissue_fractions(points, width)
    wm = tissue[:, 3]
    n, k = len(points), len(bundles)
    tube = np.zeros((n, k))
    tangents = np.zeros((n, k, 3))
    candidates = np.flatnonzero(wm > 0)
    for i, bundle in enumerate(bundles):
        reach = bundle.radius + width
        dist, nearest = cKDTree(bundle.points).query(points[candidates], distance_upper_bound=reach)
        hit = np.isfinite(dist)
        sel = candidates[hit]
        tube[sel, i] = _ramp(dist[hit] - bundle.radius, width)
        tangents[sel, i] = bundle.tangents[nearest[hit]]
    overlap = np.maximum(tube.sum(axis=1, keepdims=True), 1.0)
    share = tube / overlap * wm[:, None]
    tangents[share <= 0] = 0.0
    return AnatomySample(tissue=tissue, bundle=share, tube=tube, tangents=tangents)
