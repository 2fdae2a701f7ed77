"""Tissue properties and the multi-compartment diffusion signal.

Each voxel is a sum of compartments with axially symmetric tensors (eigenvalues
``axial, radial, radial`` in mm^2/s, principal direction ``d``):

    S(b, g) = S0 * sum_c f_c * exp(-b * (radial_c + (axial_c - radial_c) * (g . d_c)^2))

with signal fractions ``f_c`` (sum 1 where S0 > 0), b in s/mm^2 and unit gradient directions ``g``
in the same (world) frame as ``d_c``. Compartments: one fibre compartment per bundle (a
zeppelin: intra- plus extra-axonal water of that bundle), then isotropic white matter, grey
matter and CSF (balls). S0 and T1w intensities are in arbitrary scanner-like units.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .anatomy import BUNDLE_NAMES, AnatomySample

ISOTROPIC_COMPARTMENTS = ("WM_iso", "GM", "CSF")

_CHUNK = 16384


@dataclass(frozen=True)
class TissueModel:
    """Diffusivities (mm^2/s), the anisotropic share of bundle white matter, S0 and T1w intensities."""

    axial: float = 1.7e-3
    radial: float = 0.3e-3
    fibre_fraction: float = 0.8
    wm_isotropic: float = 0.7e-3
    gm: float = 0.8e-3
    csf: float = 3.0e-3
    s0_wm: float = 600.0
    s0_gm: float = 800.0
    s0_csf: float = 1500.0
    t1w_wm: float = 1000.0
    t1w_gm: float = 650.0
    t1w_csf: float = 200.0

    def compartment_names(self, bundles=BUNDLE_NAMES) -> tuple[str, ...]:
        return (*bundles, *ISOTROPIC_COMPARTMENTS)

    def eigenvalues(self, n_bundles: int = len(BUNDLE_NAMES)) -> tuple[np.ndarray, np.ndarray]:
        """Per-compartment ``(axial, radial)`` diffusivities, each ``(C,)`` mm^2/s."""
        axial = np.array([self.axial] * n_bundles + [self.wm_isotropic, self.gm, self.csf])
        radial = np.array([self.radial] * n_bundles + [self.wm_isotropic, self.gm, self.csf])
        return axial, radial

    def s0(self, tissue: np.ndarray) -> np.ndarray:
        """Noise-free b0 ``(V,)`` from tissue fractions ``(V, 4)`` (background, CSF, GM, WM)."""
        return tissue[:, 1] * self.s0_csf + tissue[:, 2] * self.s0_gm + tissue[:, 3] * self.s0_wm

    def t1w(self, tissue: np.ndarray) -> np.ndarray:
        """Noise-free T1-weighted intensity ``(V,)`` (WM > GM > CSF > background = 0)."""
        return tissue[:, 1] * self.t1w_csf + tissue[:, 2] * self.t1w_gm + tissue[:, 3] * self.t1w_wm

    def signal_fractions(self, sample: AnatomySample) -> tuple[np.ndarray, np.ndarray]:
        """``(S0 (V,), fractions (V, C))``: signal fractions of the compartments, summing to 1 where S0 > 0."""
        fibres = self.fibre_fraction * sample.bundle
        wm_iso = np.clip(sample.tissue[:, 3] - fibres.sum(axis=1), 0.0, None)
        volume = np.concatenate(
            [fibres * self.s0_wm, np.stack([wm_iso * self.s0_wm,
                                            sample.tissue[:, 2] * self.s0_gm,
                                            sample.tissue[:, 1] * self.s0_csf], axis=1)],
            axis=1,
        )
        s0 = volume.sum(axis=1)
        fractions = np.divide(volume, s0[:, None], out=np.zeros_like(volume), where=s0[:, None] > 0)
        return s0, fractions


def multi_compartment_signal(
    bvals: np.ndarray,
    gradients: np.ndarray,
    s0: np.ndarray,
    fractions: np.ndarray,
    directions: np.ndarray,
    axial: np.ndarray,
    radial: np.ndarray,
) -> np.ndarray:
    """Noise-free signal ``(V, N)`` of ``V`` voxels for ``N`` gradients.

    ``bvals`` ``(N,)`` s/mm^2; ``gradients`` ``(N, 3)`` unit vectors (zero rows for b0) in the frame
    of ``directions`` ``(V, C, 3)``; ``s0`` ``(V,)``; ``fractions`` ``(V, C)``; ``axial``/``radial``
    ``(C,)`` mm^2/s. Isotropic compartments have ``axial == radial`` (their direction is unused).
    """
    bvals = np.asarray(bvals, dtype=np.float64).reshape(-1)
    gradients = np.asarray(gradients, dtype=np.float64).reshape(-1, 3)
    axial = np.asarray(axial, dtype=np.float64)
    radial = np.asarray(radial, dtype=np.float64)
    s0 = np.asarray(s0)
    out = np.empty((len(s0), bvals.size), dtype=np.float64)
    anisotropic = np.flatnonzero(axial != radial)
    isotropic = np.flatnonzero(axial == radial)
    iso_decay = np.exp(-np.outer(radial[isotropic], bvals))  # (Ci, N)
    for start in range(0, len(s0), _CHUNK):
        sl = slice(start, start + _CHUNK)
        f = np.asarray(fractions[sl], dtype=np.float64)
        total = f[:, isotropic] @ iso_decay
        if anisotropic.size:
            d = np.asarray(directions[sl][:, anisotropic], dtype=np.float64)
            cos2 = np.einsum("vcj,nj->vcn", d, gradients) ** 2
            adc = radial[anisotropic, None] + (axial - radial)[anisotropic, None] * cos2
            total += np.einsum("vc,vcn->vn", f[:, anisotropic], np.exp(-bvals * adc))
        out[sl] = np.asarray(s0[sl], dtype=np.float64)[:, None] * total
    return out


def add_rician_noise(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of ``signal`` plus complex Gaussian noise of standard deviation ``sigma`` per channel.

    Computed in float32 (the images are stored as integers), returned as float32.
    """
    real = rng.standard_normal(size=signal.shape, dtype=np.float32)
    real *= np.float32(sigma)
    real += signal
    imag = rng.standard_normal(size=signal.shape, dtype=np.float32)
    imag *= np.float32(sigma)
    return np.hypot(real, imag, out=real)
