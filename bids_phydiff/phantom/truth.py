"""Ground truth of one phantom image grid, and the noise-free signal computed from it.

A truth folder (``sourcedata/truth/sub-XX[/ses-Y]/`` for a subject's DWI grid, or
``sourcedata/truth/template/res-RR/`` for the template grid) holds:

* ``S0.nii.gz``            (X, Y, Z) noise-free b0, float32;
* ``fractions.nii.gz``     (X, Y, Z, C) signal fractions of the compartments (sum 1 where S0 > 0);
* ``directions.nii.gz``    (X, Y, Z, 3K) unit fibre direction of bundle k in volumes 3k..3k+2,
  in WORLD coordinates (RAS+), zero where the bundle is absent;
* ``tissue_probseg.nii.gz`` (X, Y, Z, 4) volume fractions of background, CSF, GM, WM;
* ``tissue_dseg.nii.gz``   labels 0 background, 1 CSF, 2 GM, 3 WM (largest fraction);
* ``tracts_probseg.nii.gz`` (X, Y, Z, K) white matter inside tract k, in [0, 1];
* ``tracts_dseg.nii.gz``   labels 1..K of the most probable tract where its probability >= 0.5;
* ``truth.json``           compartments (name, axial and radial diffusivity in mm^2/s), bundles,
  grid, transform to the template, noise level, seed, template name and the images it belongs to.

Compartment c is a zeppelin along bundle c's direction for c < K, then isotropic ``WM_iso``, ``GM``
and ``CSF``. The signal for b-value ``b`` (s/mm^2) and world direction ``g`` is
``S0 * sum_c f_c exp(-b (radial_c + (axial_c - radial_c) (g . d_c)^2))``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import NoInputError
from ..prep.gradients import fsl_to_world
from .anatomy import BUNDLE_NAMES, TISSUES, evaluate
from .deformation import Deformation
from .grid import Grid
from .nifti import save_nifti
from .signal import TissueModel, multi_compartment_signal

TRACT_THRESHOLD = 0.5
"""A voxel gets a tract label where that tract's probability is at least this."""


@dataclass(frozen=True)
class Truth:
    """Ground truth on a grid (see the module docstring for meaning and units)."""

    affine: np.ndarray
    s0: np.ndarray
    fractions: np.ndarray
    directions: np.ndarray
    tissue: np.ndarray
    tracts: np.ndarray
    compartments: tuple[str, ...]
    axial: np.ndarray
    radial: np.ndarray
    bundles: tuple[str, ...]
    metadata: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.s0.shape)

    def tissue_labels(self) -> np.ndarray:
        """``(X, Y, Z)`` uint8: 0 background, 1 CSF, 2 GM, 3 WM."""
        return np.argmax(self.tissue, axis=-1).astype(np.uint8)

    def tract_labels(self) -> np.ndarray:
        """``(X, Y, Z)`` uint8: 1..K most probable tract with probability >= 0.5, else 0."""
        return tract_labels(self.tracts)

    def signal_world(self, bvals: np.ndarray, gradients: np.ndarray) -> np.ndarray:
        """Noise-free signal ``(X, Y, Z, N)`` for world (RAS+) unit ``gradients`` ``(N, 3)``."""
        bvals = np.asarray(bvals, dtype=np.float64).reshape(-1)
        out = np.zeros((*self.shape, bvals.size), dtype=np.float64)
        inside = self.s0 > 0
        k = len(self.bundles)
        n_iso = len(self.compartments) - k
        dirs = np.concatenate(
            [self.directions[inside], np.zeros((int(inside.sum()), n_iso, 3), dtype=self.directions.dtype)], axis=1
        )
        out[inside] = multi_compartment_signal(
            bvals, gradients, self.s0[inside], self.fractions[inside], dirs, self.axial, self.radial
        )
        return out

    def signal(self, bvals: np.ndarray, bvecs: np.ndarray) -> np.ndarray:
        """Noise-free signal ``(X, Y, Z, N)``; ``bvecs`` ``(N, 3)`` in FSL convention of this grid's image."""
        return self.signal_world(bvals, fsl_to_world(np.asarray(bvecs, dtype=np.float64), self.affine))

    def write(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        shape = self.shape
        save_nifti(folder / "S0.nii.gz", self.s0, self.affine, np.float32)
        save_nifti(folder / "fractions.nii.gz", self.fractions, self.affine, np.float32)
        save_nifti(
            folder / "directions.nii.gz", self.directions.reshape(*shape, -1), self.affine, np.float32
        )
        save_nifti(folder / "tissue_probseg.nii.gz", self.tissue, self.affine, np.float32)
        save_nifti(folder / "tissue_dseg.nii.gz", self.tissue_labels(), self.affine, np.uint8)
        save_nifti(folder / "tracts_probseg.nii.gz", self.tracts, self.affine, np.float32)
        save_nifti(folder / "tracts_dseg.nii.gz", self.tract_labels(), self.affine, np.uint8)
        meta = {
            **self.metadata,
            "grid": Grid(shape, self.affine).to_json(),
            "compartments": [
                {"name": n, "axial_diffusivity": float(a), "radial_diffusivity": float(r)}
                for n, a, r in zip(self.compartments, self.axial, self.radial)
            ],
            "bundles": list(self.bundles),
            "tissue_labels": {str(i): name for i, name in enumerate(TISSUES)},
            "units": {
                "diffusivity": "mm^2/s",
                "b": "s/mm^2",
                "directions": "unit vectors in world RAS+ coordinates",
                "S0": "arbitrary (white matter S0 = sigma * SNR)",
            },
        }
        (folder / "truth.json").write_text(json.dumps(meta, indent=2) + "\n")
        return folder


def tract_labels(tracts: np.ndarray) -> np.ndarray:
    """Max-probability labels 1..K from tract probabilities ``(..., K)``; 0 where all are below 0.5."""
    best = np.argmax(tracts, axis=-1)
    return np.where(np.max(tracts, axis=-1) >= TRACT_THRESHOLD, best + 1, 0).astype(np.uint8)


def render_truth(grid: Grid, deformation: Deformation, model: TissueModel, metadata: dict | None = None) -> Truth:
    """Sample the anatomy through ``deformation`` on ``grid`` and build its ground truth.

    Arrays are rounded to float32, exactly as stored, so the signal computed from this object and
    from the written files agree.
    """
    points = grid.world_points()
    sample = evaluate(deformation.to_template(points), grid.voxel_size)
    s0, fractions = model.signal_fractions(sample)
    directions = np.zeros_like(sample.tangents)
    fibred = np.flatnonzero(np.any(sample.bundle > 0, axis=1))
    if fibred.size:
        rot = deformation.direction_rotation(points[fibred])
        directions[fibred] = np.einsum("vij,vkj->vki", rot, sample.tangents[fibred])
    axial, radial = model.eigenvalues(len(BUNDLE_NAMES))
    meta = dict(metadata or {})
    meta.setdefault("transform_to_template", deformation.to_json())
    shape = grid.shape
    return Truth(
        affine=np.asarray(grid.affine, dtype=np.float64),
        s0=s0.reshape(shape).astype(np.float32),
        fractions=fractions.reshape(*shape, -1).astype(np.float32),
        directions=directions.reshape(*shape, -1, 3).astype(np.float32),
        tissue=sample.tissue.reshape(*shape, -1).astype(np.float32),
        tracts=sample.tract_probability().reshape(*shape, -1).astype(np.float32),
        compartments=model.compartment_names(BUNDLE_NAMES),
        axial=axial,
        radial=radial,
        bundles=BUNDLE_NAMES,
        metadata=meta,
    )


def read_truth(folder: str | Path) -> Truth:
    """Load a truth folder written by :meth:`Truth.write`."""
    folder = Path(folder)
    meta_path = folder / "truth.json"
    if not meta_path.is_file():
        raise NoInputError(f"{meta_path}: no phantom ground truth here")
    meta = json.loads(meta_path.read_text())
    s0_img = nib.load(folder / "S0.nii.gz")
    shape = s0_img.shape

    def data(name):
        return np.asarray(nib.load(folder / name).dataobj, dtype=np.float32)

    comps = meta.pop("compartments")
    bundles = tuple(meta.pop("bundles"))
    return Truth(
        affine=s0_img.affine,
        s0=data("S0.nii.gz"),
        fractions=data("fractions.nii.gz").reshape(*shape, -1),
        directions=data("directions.nii.gz").reshape(*shape, -1, 3),
        tissue=data("tissue_probseg.nii.gz").reshape(*shape, -1),
        tracts=data("tracts_probseg.nii.gz").reshape(*shape, -1),
        compartments=tuple(c["name"] for c in comps),
        axial=np.array([c["axial_diffusivity"] for c in comps]),
        radial=np.array([c["radial_diffusivity"] for c in comps]),
        bundles=bundles,
        metadata=meta,
    )


def truth_folder(truth_dir: str | Path, subject: str, session: str | None = None) -> Path:
    """``truth_dir/sub-<subject>[/ses-<session>]`` (labels with or without their ``sub-``/``ses-`` prefix)."""
    folder = Path(truth_dir) / f"sub-{str(subject).removeprefix('sub-')}"
    if session is not None:
        folder = folder / f"ses-{str(session).removeprefix('ses-')}"
    return folder


def noise_free_signal(
    truth_dir: str | Path,
    subject: str,
    bvals: np.ndarray,
    bvecs: np.ndarray,
    session: str | None = None,
) -> np.ndarray:
    """Noise-free DWI ``(X, Y, Z, N)`` of a phantom subject on its DWI grid.

    ``bvals`` ``(N,)`` s/mm^2 and ``bvecs`` ``(N, 3)`` in FSL convention of that subject's DWI file
    (as a GradientTable's ``bvecs``); reads only the truth folder of the subject (and session).
    """
    return read_truth(truth_folder(truth_dir, subject, session)).signal(bvals, bvecs)
