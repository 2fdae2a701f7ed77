"""The phantom anatomy as a TemplateFlow template, with its tract atlas.

Written under a TemplateFlow home (``<home>/tpl-<Name>/``), so ``TEMPLATEFLOW_HOME=<home>`` and
``templateflow.api.get(Name, resolution=R, suffix="T1w", desc=None)`` find it offline. Per
resolution ``RR`` (whole mm, two digits), on a RAS+ grid centred on the origin:

``tpl-<Name>_res-RR_T1w.nii.gz``, ``_desc-brain_mask``, ``_label-{WM,GM,CSF}_probseg``,
``_desc-b0_dwi`` (noise-free b0), ``_atlas-Tracts_dseg`` (labels 1..K, 0 none; max probability
>= 0.5), ``_atlas-Tracts_probseg`` (4D, K volumes in [0, 1]) and ``_atlas-Tracts_dseg.tsv``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .anatomy import HEAD_SEMI_AXES, TISSUES
from .deformation import Deformation
from .grid import Grid, centred_grid
from .nifti import save_nifti
from .signal import TissueModel
from .truth import Truth, render_truth

log = logging.getLogger(__name__)

MARGIN_MM = 8.0
"""Space around the head in the template grid."""


def resolution_label(mm: float) -> str:
    """TemplateFlow ``res`` label of a whole-mm resolution: 4 -> ``"04"``, 2 -> ``"02"``."""
    if abs(mm - round(mm)) > 1e-6 or round(mm) < 1:
        raise ValueError(f"template resolutions are whole millimetres, got {mm}")
    return f"{int(round(mm)):02d}"


def template_grid(mm: float) -> Grid:
    """The template grid at ``mm``: RAS+, odd voxel counts, a voxel centre on the origin."""
    return centred_grid(np.asarray(HEAD_SEMI_AXES) + MARGIN_MM, mm, "RAS", odd=True)


@dataclass(frozen=True)
class TemplateFiles:
    """Paths of one resolution of the written template."""

    resolution: str
    t1w: Path
    mask: Path
    probseg: dict
    b0: Path
    atlas_dseg: Path
    atlas_probseg: Path
    atlas_tsv: Path
    truth: Truth


def write_resolution(folder: Path, name: str, mm: float, model: TissueModel) -> TemplateFiles:
    """Write every image of one template resolution into ``folder`` (``tpl-<name>``)."""
    res = resolution_label(mm)
    grid = template_grid(mm)
    truth = render_truth(grid, Deformation.identity(), model, metadata={"space": f"tpl-{name}", "resolution": res})
    tissue = truth.tissue.reshape(-1, len(TISSUES))
    prefix = folder / f"tpl-{name}_res-{res}"
    affine = grid.affine
    t1w = save_nifti(f"{prefix}_T1w.nii.gz", model.t1w(tissue).reshape(grid.shape), affine, np.float32)
    mask = save_nifti(f"{prefix}_desc-brain_mask.nii.gz", truth.tissue[..., 0] < 0.5, affine, np.uint8)
    probseg = {
        label: save_nifti(
            f"{prefix}_label-{label}_probseg.nii.gz", truth.tissue[..., TISSUES.index(label)], affine, np.float32
        )
        for label in ("WM", "GM", "CSF")
    }
    b0 = save_nifti(f"{prefix}_desc-b0_dwi.nii.gz", truth.s0, affine, np.float32)
    dseg = save_nifti(f"{prefix}_atlas-Tracts_dseg.nii.gz", truth.tract_labels(), affine, np.uint8)
    prob = save_nifti(f"{prefix}_atlas-Tracts_probseg.nii.gz", np.clip(truth.tracts, 0, 1), affine, np.float32)
    tsv = Path(f"{prefix}_atlas-Tracts_dseg.tsv")
    tsv.write_text("index\tname\n" + "".join(f"{i + 1}\t{b}\n" for i, b in enumerate(truth.bundles)))
    return TemplateFiles(res, t1w, mask, probseg, b0, dseg, prob, tsv, truth)


def write_template(home: str | Path, name: str, resolutions, model: TissueModel) -> dict[str, TemplateFiles]:
    """Write ``tpl-<name>`` under the TemplateFlow ``home`` at each resolution (mm); return files per res label."""
    folder = Path(home) / f"tpl-{name}"
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    description = {
        "Identifier": name,
        "Name": f"{name}: synthetic diffusion MRI phantom anatomy (bids_phydiff)",
        "Authors": ["bids_phydiff phantom generator"],
        "License": "CC0",
        "Species": "synthetic",
        "TemplateFlowVersion": "1.0.0",
        "BIDSVersion": "1.1.0",
        "ReferencesAndLinks": [],
        "res": {},
    }
    for mm in resolutions:
        files = write_resolution(folder, name, mm, model)
        grid = template_grid(mm)
        description["res"][files.resolution] = {
            "origin": grid.affine[:3, 3].round(6).tolist(),
            "shape": list(grid.shape),
            "zooms": [float(mm)] * 3,
            "grid_spacing": float(mm),
        }
        written[files.resolution] = files
        log.info("template %s res-%s: grid %s", name, files.resolution, grid.shape)
    (folder / "template_description.json").write_text(json.dumps(description, indent=2) + "\n")
    return written
