"""What synthesis needs from a bundle folder besides the network, and the app's sampler settings.

A bundle (DESIGN.md section 4) carries ``adc_atlas.nii.gz`` ``(X, Y, Z, S)`` mm^2/s, one volume per shell
of ``config.json``'s ``b_shells`` (s/mm^2), and, when its model has an XTRACT adapter, the tract atlas it
was trained with (``tract_atlas.nii.gz``, ``(X, Y, Z, K)`` probabilities on the model grid; its name is in
the bundle metadata). :func:`bundle_conditions` reads both; :func:`app_sampler` is the sampler the app
uses for a ``--sampler/--steps/--strength`` choice. Used by the participant level with ``--model`` and by
the evaluation command, so both synthesise the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import SAMPLER_ETA, SAMPLER_METHOD, SAMPLER_STEPS, SAMPLER_STRENGTH
from ..errors import InputDataError
from ..model.bundle import ADC_ATLAS_FILE, TRACT_ATLAS_FILE
from ..model.sampling import SamplerConfig

__all__ = ["CLIP_X0", "BundleConditions", "app_sampler", "bundle_conditions"]

CLIP_X0 = (-1.0, 2.0)
"""Each step's predicted clean slice is clamped to [-1, 2] in normalised units, i.e. 0 to 1.5 times the
b0's 99.5th percentile: magnitude signal is not negative and no diffusion-weighted signal exceeds that,
while a model early in training would otherwise amplify its errors at the first, noisiest steps
(x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar))."""


@dataclass(frozen=True)
class BundleConditions:
    """``adc_atlas`` ``(X, Y, Z, S)`` float32 mm^2/s for ``shells`` ``(S,)`` s/mm^2; ``tracts``
    ``(X, Y, Z, K)`` float32 on the model grid, or None for a model without an adapter."""

    adc_atlas: np.ndarray
    shells: tuple[float, ...]
    tracts: np.ndarray | None


def bundle_conditions(bundle) -> BundleConditions:
    """The ADC atlas and (for an adapter model) the tract atlas of a loaded
    :class:`~bids_phydiff.model.bundle.Bundle`; a missing or malformed file is an :class:`InputDataError`
    (exit 65) naming it."""
    import nibabel as nib

    from ..prep.tracts import load_tract_atlas

    path = Path(bundle.path)
    adc_file = path / ADC_ATLAS_FILE
    if not adc_file.is_file():
        raise InputDataError(f"model bundle {path}: no {ADC_ATLAS_FILE}")
    atlas = np.asarray(nib.load(str(adc_file)).dataobj, dtype=np.float32)
    if atlas.ndim == 3:
        atlas = atlas[..., None]
    shells = tuple(float(b) for b in bundle.b_shells)
    if atlas.shape != tuple(bundle.grid.shape) + (len(shells),):
        raise InputDataError(f"{adc_file}: shape {atlas.shape} is not the grid {tuple(bundle.grid.shape)} x "
                             f"{len(shells)} shells of the bundle")
    tracts = None
    if bundle.model.config.adapter is not None:
        tract_file = path / (bundle.metadata.get("tract_atlas") or TRACT_ATLAS_FILE)
        if not tract_file.is_file():
            raise InputDataError(f"model bundle {path}: has an adapter but no {tract_file.name}")
        tracts = load_tract_atlas(tract_file, tuple(bundle.grid.shape), np.asarray(bundle.grid.affine))
    return BundleConditions(atlas, shells, tracts)


def app_sampler(method: str = SAMPLER_METHOD, steps: int = SAMPLER_STEPS, strength: float = SAMPLER_STRENGTH,
                eta: float = SAMPLER_ETA, shifts: int | None = None) -> SamplerConfig:
    """The app's sampler: ``method`` ``ddpm``/``ddim``, DDIM ``steps`` and ``eta``, SDEdit ``strength`` in
    (0, 1] (1 = start from pure noise), ``shifts`` shifted passes per step (None = the bundle's choice),
    predicted x0 clamped to :data:`CLIP_X0`."""
    return SamplerConfig(method=method, steps=steps, eta=eta, clip_x0=CLIP_X0, shifts=shifts,
                         start="noise" if strength >= 1.0 else "sdedit", strength=min(strength, 1.0))
