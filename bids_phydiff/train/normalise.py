"""Intensity normalisation that keeps the physics (DESIGN.md section 4).

Per subject, ``scale`` = the 99.5th percentile of the b0 reference inside the brain mask. Every image
of that subject (b0 and all DWI) is divided by the same scale, so S_b / S_0 ratios survive, then mapped
linearly to [-1, 1]: ``x_norm = 2 * x / scale - 1``. Synthesis inverts it, so outputs are in the
subject's signal units.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PERCENTILE = 99.5


@dataclass(frozen=True)
class Normaliser:
    """``scale`` in the subject's signal units."""

    scale: float

    @classmethod
    def from_b0(cls, b0: np.ndarray, mask: np.ndarray, percentile: float = PERCENTILE) -> "Normaliser":
        inside = np.asarray(b0, dtype=np.float64)[np.asarray(mask, dtype=bool)]
        inside = inside[np.isfinite(inside)]
        if inside.size == 0:
            raise ValueError("the brain mask is empty: cannot compute the intensity scale")
        scale = float(np.percentile(inside, percentile))
        if not scale > 0:
            raise ValueError(f"the b0 reference is not positive inside the mask (scale {scale})")
        return cls(scale)

    def forward(self, signal):
        """Signal units -> [-1, 1] (works on numpy arrays and torch tensors)."""
        return signal * (2.0 / self.scale) - 1.0

    def inverse(self, normalised):
        """[-1, 1] -> signal units."""
        return (normalised + 1.0) * (0.5 * self.scale)
