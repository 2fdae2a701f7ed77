"""Per-subject spatial transform: where each subject voxel samples the template anatomy.

``phi`` maps a subject world point ``x`` (RAS+ mm, scanner space of that subject's images) to the
template world point ``y`` it shows:

    z = R^T (x - t)                                  (undo the rigid head position)
    y = z + u(z),   u(z) = sum_m a_m sin(2 pi k_m . z / L + p_m)   (smooth anatomy difference)

with rotation ``R`` (3, 3), translation ``t`` (3,) mm, integer wave vectors ``k_m`` (cycles per
period ``L`` mm), phases ``p_m`` (rad) and amplitudes ``a_m`` (3,) mm. The displacement gradient
stays well below 1, so ``phi`` is invertible. Fibre directions move from template to subject
world with the rotation part of the Jacobian of ``phi^-1``: ``R polar(I + grad u)^T``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..prep.motion import rotation_angles, rotation_matrix

PERIOD_MM = 240.0
"""Period ``L`` of the displacement modes: wavelengths of 85-240 mm."""

N_MODES = 4

MAX_GRADIENT = 0.5
"""Upper bound on the Lipschitz constant of ``u`` (keeps ``phi`` invertible)."""


@dataclass(frozen=True)
class Deformation:
    """Rigid head position plus smooth displacement; see the module docstring for the formula."""

    rotation: np.ndarray
    translation: np.ndarray
    wavevectors: np.ndarray
    phases: np.ndarray
    amplitudes: np.ndarray
    period: float = PERIOD_MM

    @classmethod
    def identity(cls) -> "Deformation":
        return cls(np.eye(3), np.zeros(3), np.zeros((0, 3)), np.zeros(0), np.zeros((0, 3)))

    def with_rigid(self, rotation: np.ndarray, translation: np.ndarray) -> "Deformation":
        """The same anatomy at another head position."""
        return replace(self, rotation=np.asarray(rotation, float), translation=np.asarray(translation, float))

    def _unrigid(self, points: np.ndarray) -> np.ndarray:
        shifted = np.asarray(points, dtype=np.float64) - self.translation
        return np.einsum("vi,ij->vj", shifted, self.rotation, optimize=False)

    def _angles(self, z: np.ndarray) -> np.ndarray:
        return np.einsum("vj,mj->vm", z, self.wavevectors * (2.0 * np.pi / self.period)) + self.phases

    def to_template(self, points: np.ndarray) -> np.ndarray:
        """``phi``: subject world points ``(V, 3)`` mm -> template world points ``(V, 3)`` mm."""
        z = self._unrigid(points)
        if len(self.phases):
            z += np.einsum("vm,mi->vi", np.sin(self._angles(z)), self.amplitudes)
        return z

    def displacement_gradient(self, points: np.ndarray) -> np.ndarray:
        """``grad u`` ``(V, 3, 3)`` (row i: derivatives of u_i) at subject world points ``(V, 3)``."""
        z = self._unrigid(points)
        scale = np.cos(self._angles(z)) * (2.0 * np.pi / self.period)  # (V, M)
        return np.einsum("vm,mi,mj->vij", scale, self.amplitudes, self.wavevectors)

    def direction_rotation(self, points: np.ndarray) -> np.ndarray:
        """Rotations ``(V, 3, 3)`` taking template fibre directions to subject world at ``points``."""
        jac = np.eye(3) + self.displacement_gradient(points)
        u, _, vt = np.linalg.svd(jac)
        polar = u @ vt
        return self.rotation @ np.swapaxes(polar, 1, 2)

    def lipschitz_bound(self) -> float:
        """An upper bound on the norm of ``grad u`` anywhere."""
        return float(
            np.sum(np.linalg.norm(self.amplitudes, axis=1) * np.linalg.norm(self.wavevectors, axis=1))
            * 2.0
            * np.pi
            / self.period
        )

    def to_json(self) -> dict:
        return {
            "convention": (
                "x: subject world (RAS+ mm); z = R^T (x - t); template world y = z + u(z), "
                "u(z) = sum_m amplitudes[m] * sin(2 pi wavevectors[m] . z / period_mm + phases[m])"
            ),
            "rotation": self.rotation.tolist(),
            "translation_mm": self.translation.tolist(),
            "rotation_angles_deg": np.rad2deg(rotation_angles(self.rotation)).tolist(),
            "wavevectors": self.wavevectors.tolist(),
            "phases_rad": self.phases.tolist(),
            "amplitudes_mm": self.amplitudes.tolist(),
            "period_mm": self.period,
        }

    @classmethod
    def from_json(cls, data: dict) -> "Deformation":
        return cls(
            rotation=np.asarray(data["rotation"], dtype=np.float64).reshape(3, 3),
            translation=np.asarray(data["translation_mm"], dtype=np.float64).reshape(3),
            wavevectors=np.asarray(data["wavevectors"], dtype=np.float64).reshape(-1, 3),
            phases=np.asarray(data["phases_rad"], dtype=np.float64).reshape(-1),
            amplitudes=np.asarray(data["amplitudes_mm"], dtype=np.float64).reshape(-1, 3),
            period=float(data["period_mm"]),
        )


def random_rigid(rng: np.random.Generator, rotation_deg: float, translation_mm: float):
    """Rotation ``(3, 3)`` with angles uniform in +-``rotation_deg`` and translation uniform in +-``translation_mm``."""
    angles = rng.uniform(-rotation_deg, rotation_deg, size=3)
    translation = rng.uniform(-translation_mm, translation_mm, size=3)
    return rotation_matrix(np.deg2rad(angles)), translation


def random_warp(rng: np.random.Generator, deformation_mm: float, n_modes: int = N_MODES) -> Deformation:
    """A smooth displacement of at most ``deformation_mm`` anywhere (identity rigid part)."""
    choices = np.array([-2, -1, 0, 1, 2], dtype=np.float64)
    wavevectors = rng.choice(choices, size=(n_modes, 3))
    wavevectors[np.all(wavevectors == 0, axis=1), 0] = 1.0  # no constant mode
    phases = rng.uniform(0.0, 2.0 * np.pi, size=n_modes)
    directions = rng.normal(size=(n_modes, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    weights = rng.uniform(0.5, 1.0, size=n_modes)
    amplitudes = directions * (weights / weights.sum() * deformation_mm)[:, None]
    warp = Deformation(np.eye(3), np.zeros(3), wavevectors, phases, amplitudes)
    bound = warp.lipschitz_bound()
    if bound > MAX_GRADIENT:
        warp = replace(warp, amplitudes=amplitudes * (MAX_GRADIENT / bound))
    return warp
