"""The phantom generator's settings: one frozen dataclass, checked on creation.

Units: resolutions and distances in mm, angles in degrees, b-values in s/mm^2.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import UsageError


class PhantomConfigError(UsageError, ValueError):
    """A phantom setting that cannot work (exit code 64 on the command line)."""


_LABEL = re.compile(r"^[A-Za-z0-9]+$")


@dataclass(frozen=True)
class PhantomConfig:
    """What to generate.

    ``subjects`` subjects labelled ``01``, ``02``...; ``sessions`` > 0 gives each subject sessions
    ``1``..``K`` (0: no session level); ``runs`` > 1 gives DWI runs ``run-1``..``run-R`` (same head
    position, independent noise). DWI: ``n_b0`` b0 volumes spread through the series plus
    ``directions`` uniformly spread directions on each shell of ``shells`` (s/mm^2), voxel size
    ``resolution`` mm, Rician noise with sigma = S0 of white matter / ``snr``. The T1w has voxels of
    ``t1w_resolution`` mm (default: half the DWI voxel, at least 1 mm); subjects listed in
    ``without_t1w`` get none. The template ``tpl-<template_name>`` is written at ``resolution`` and at
    every extra resolution in ``template_resolutions`` (whole mm; a fractional ``resolution`` is
    rounded for the template). Per subject a rigid motion (rotations up to
    ``rotation_deg`` about each axis, translations up to ``translation_mm``) and a smooth
    displacement of at most ``deformation_mm`` are drawn from ``seed``. ``motion_mm`` > 0 moves the head
    during each DWI run, volume by volume (translations up to ``motion_mm`` mm and rotations up to
    ``motion_mm`` degrees about each axis; see :mod:`.motion`); 0 (default) keeps it still.
    """

    subjects: int = 3
    resolution: float = 4.0
    seed: int = 0
    shells: tuple[float, ...] = (1000.0, 2000.0, 3000.0)
    directions: int = 12
    n_b0: int = 2
    snr: float = 30.0
    sessions: int = 0
    runs: int = 1
    without_t1w: tuple[str, ...] = ()
    template_name: str = "Phantom"
    template_resolutions: tuple[float, ...] = ()
    t1w_resolution: float | None = None
    t1w_snr: float = 40.0
    rotation_deg: float = 10.0
    translation_mm: float = 5.0
    deformation_mm: float = 3.0
    motion_mm: float = 0.0
    orientations: tuple[str, ...] = field(default=("RAS", "LAS"))

    def __post_init__(self):
        object.__setattr__(self, "shells", tuple(float(b) for b in self.shells))
        object.__setattr__(self, "template_resolutions", tuple(float(r) for r in self.template_resolutions))
        labels = tuple(str(s).removeprefix("sub-") for s in self.without_t1w)
        object.__setattr__(self, "without_t1w", labels)
        object.__setattr__(self, "orientations", tuple(str(o).upper() for o in self.orientations))
        checks = [
            (self.subjects >= 1, f"subjects must be at least 1, got {self.subjects}"),
            (0.5 <= self.resolution <= 10.0, f"resolution must be 0.5..10 mm, got {self.resolution}"),
            (self.seed >= 0, f"seed must be >= 0, got {self.seed}"),
            (len(self.shells) >= 1, "at least one shell is needed"),
            (all(b > 50.0 for b in self.shells), f"shell b-values must be > 50 s/mm^2, got {self.shells}"),
            (len(set(self.shells)) == len(self.shells), f"shells repeat: {self.shells}"),
            (self.directions >= 1, f"directions must be at least 1, got {self.directions}"),
            (self.n_b0 >= 1, f"n_b0 must be at least 1, got {self.n_b0}"),
            (self.snr > 0, f"snr must be > 0, got {self.snr}"),
            (self.t1w_snr > 0, f"t1w_snr must be > 0, got {self.t1w_snr}"),
            (self.sessions >= 0, f"sessions must be >= 0, got {self.sessions}"),
            (self.runs >= 1, f"runs must be at least 1, got {self.runs}"),
            (bool(_LABEL.match(self.template_name)), f"template_name must be alphanumeric: {self.template_name!r}"),
            (
                all(1 <= r <= 10 and abs(r - round(r)) < 1e-6 for r in self.template_resolutions),
                f"template resolutions must be whole mm in 1..10, got {self.template_resolutions}",
            ),
            (self.t1w_resolution is None or 0.5 <= self.t1w_resolution <= 10.0, "t1w_resolution must be 0.5..10 mm"),
            (0 <= self.rotation_deg <= 30, f"rotation_deg must be 0..30, got {self.rotation_deg}"),
            (0 <= self.translation_mm <= 10, f"translation_mm must be 0..10, got {self.translation_mm}"),
            (0 <= self.deformation_mm <= 6, f"deformation_mm must be 0..6, got {self.deformation_mm}"),
            (0 <= self.motion_mm <= 10, f"motion_mm must be 0..10, got {self.motion_mm}"),
            (len(self.orientations) >= 1, "at least one orientation is needed"),
            (
                all(o in ("RAS", "LAS") for o in self.orientations),
                f"orientations must be RAS or LAS: {self.orientations}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise PhantomConfigError(message)
        unknown = sorted(set(self.without_t1w) - set(self.subject_labels))
        if unknown:
            raise PhantomConfigError(f"without_t1w names subjects that are not generated: {unknown}")

    @property
    def subject_labels(self) -> tuple[str, ...]:
        """``("01", "02", ...)``."""
        width = max(2, len(str(self.subjects)))
        return tuple(f"{i + 1:0{width}d}" for i in range(self.subjects))

    @property
    def session_labels(self) -> tuple[str | None, ...]:
        """``(None,)`` without sessions, else ``("1", ..., "K")``."""
        if self.sessions == 0:
            return (None,)
        return tuple(str(i + 1) for i in range(self.sessions))

    @property
    def run_labels(self) -> tuple[str | None, ...]:
        """``(None,)`` for one run, else ``("1", ..., "R")``."""
        if self.runs == 1:
            return (None,)
        return tuple(str(i + 1) for i in range(self.runs))

    @property
    def t1w_voxel(self) -> float:
        """T1w voxel size in mm."""
        if self.t1w_resolution is not None:
            return float(self.t1w_resolution)
        return max(1.0, self.resolution / 2.0)

    @property
    def template_resolution(self) -> float:
        """Resolution (whole mm) of the main template: the DWI resolution rounded, at least 1 mm."""
        return float(max(1, round(self.resolution)))

    @property
    def all_template_resolutions(self) -> tuple[float, ...]:
        """The main template resolution first, then the extra ones (duplicates dropped)."""
        out: list[float] = []
        for r in (self.template_resolution, *self.template_resolutions):
            if all(abs(r - o) > 1e-6 for o in out):
                out.append(r)
        return tuple(out)
