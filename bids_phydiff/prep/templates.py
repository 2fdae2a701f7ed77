"""Templates and the voxel grid the data are resampled into.

A :class:`TemplateGrid` is a template at an output resolution: the grid (shape, voxel -> RAS+ mm affine)
plus the template's files (T1w, brain mask, and a b0-like image when the template has one). The files are
the template's own, at ``source_resolution_mm``; when that differs from the grid (e.g. a 4 mm grid made
from a 2 mm template) :func:`.grid.resample_to_grid` (or :func:`template_image`) brings any of them onto
the grid.

:func:`load_template` finds the files in the TemplateFlow home and fetches missing ones only when allowed
(see :mod:`.template_files`); grid operations (padding, placing arrays, equality) are in :mod:`.grid`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from ..spaces import DEFAULT_TEMPLATE
from .grid import GRID_ATOL_MM, regrid, resample_to_grid, same_grid
from .nifti import save_image, voxel_sizes
from .template_files import (
    SPACING_TOLERANCE_MM,
    TemplateError,
    TemplateFiles,
    download,
    local_resolutions,
    pick_resolution,
    templateflow_home,
)

log = logging.getLogger(__name__)

IMAGE_KINDS = ("t1w", "brain_t1w", "mask", "b0")


@dataclass(frozen=True, eq=False)
class TemplateGrid:
    """A template at an output resolution.

    ``shape`` (X, Y, Z) and ``affine`` (4, 4, voxel -> RAS+ mm) define the grid. ``t1w`` is the best
    T1-weighted reference (whole head when the template has it, else brain-extracted); ``mask`` the brain
    mask; ``brain_t1w`` and ``b0`` (a b0-like image, e.g. a phantom's ``desc-b0_dwi``) are optional. These
    files are on the template's own grid, of spacing ``source_resolution_mm``.
    """

    name: str
    resolution_mm: float
    shape: tuple[int, int, int]
    affine: np.ndarray
    t1w: Path
    mask: Path
    brain_t1w: Path | None = None
    b0: Path | None = None
    source_resolution_mm: float = 0.0
    home: Path | None = None
    res_label: str | None = field(default=None)

    def __post_init__(self):
        affine = np.array(self.affine, dtype=np.float64).reshape(4, 4)
        affine.flags.writeable = False
        object.__setattr__(self, "affine", affine)
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        for name in ("t1w", "mask", "brain_t1w", "b0", "home"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value))
        if not self.source_resolution_mm:
            object.__setattr__(self, "source_resolution_mm", float(self.resolution_mm))

    @property
    def has_head_t1w(self) -> bool:
        """True when ``t1w`` is a whole-head T1w (TemplateFlow name without ``desc-``), not a brain-extracted
        T1w or a b0 image standing in for it."""
        name = Path(self.t1w).name
        return name.endswith("_T1w.nii.gz") and "_desc-" not in name

    @property
    def zooms(self) -> np.ndarray:
        """Voxel sizes (3,) in mm."""
        return voxel_sizes(self.affine)

    def image(self, kind: str) -> Path:
        """Path of one of the template's images (``t1w``, ``brain_t1w``, ``mask``, ``b0``)."""
        if kind not in IMAGE_KINDS:
            raise ValueError(f"unknown template image {kind!r}; one of {IMAGE_KINDS}")
        path = getattr(self, kind)
        if path is None:
            raise TemplateError(f"template {self.name} has no {kind} image (TEMPLATEFLOW_HOME={self.home})")
        return path

    def same_grid(self, other, atol: float = GRID_ATOL_MM) -> bool:
        """True when ``other`` (any object with ``shape`` and ``affine``) is this grid (:func:`.grid.same_grid`)."""
        return same_grid(self.shape, self.affine, other.shape, other.affine, atol)

    def reference_image(self) -> nib.Nifti1Image:
        """An empty (uint8 zeros) image on the grid, for tools that want a reference image."""
        img = nib.Nifti1Image(np.zeros(self.shape, dtype=np.uint8), self.affine)
        img.set_qform(self.affine, code=1)
        img.set_sform(self.affine, code=1)
        return img

    def to_dict(self) -> dict:
        """JSON-ready description (paths as strings, affine as nested lists)."""
        out = {
            "name": self.name,
            "resolution_mm": float(self.resolution_mm),
            "shape": list(self.shape),
            "affine": np.round(self.affine, 6).tolist(),
            "source_resolution_mm": float(self.source_resolution_mm),
            "res_label": self.res_label,
        }
        for name in ("t1w", "mask", "brain_t1w", "b0", "home"):
            value = getattr(self, name)
            out[name] = None if value is None else str(value)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "TemplateGrid":
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__ if k in data})


def load_template(
    name: str = DEFAULT_TEMPLATE,
    resolution_mm: float = 2.0,
    home: str | Path | None = None,
    allow_download: bool = True,
    timeout_s: float = 5.0,
) -> TemplateGrid:
    """The template ``name`` on a grid of ``resolution_mm`` (isotropic, mm).

    The template's own resolution equal to ``resolution_mm`` is used when present; otherwise the coarsest
    one finer than it (e.g. 2 mm for a 4 mm grid), and the grid is the template's field of view cut into
    voxels of ``resolution_mm`` (same orientation, same outer corner). Local files are preferred; a file
    missing locally is downloaded through TemplateFlow only when ``allow_download``. Raises
    :class:`TemplateError` naming TEMPLATEFLOW_HOME when nothing usable is found.
    """
    if not resolution_mm or resolution_mm <= 0 or not math.isfinite(resolution_mm):
        raise ValueError(f"the output resolution must be a positive number of mm, got {resolution_mm}")
    start = time.monotonic()
    root = templateflow_home(home)
    folder = root / f"tpl-{name}"
    local = local_resolutions(folder, name) if folder.is_dir() else []
    spacings = [r.spacing for r in local]

    choice = pick_resolution(spacings, resolution_mm, allow_coarser=False)
    if choice is None and allow_download:
        try:
            chosen = download(name, resolution_mm, root, timeout_s)
        except TemplateError as exc:
            if not local:
                raise
            log.warning("%s; using a coarser local resolution instead", exc)
            chosen = None
        if chosen is not None:
            return _make_grid(name, resolution_mm, chosen, root)
    if choice is None:
        choice = pick_resolution(spacings, resolution_mm, allow_coarser=True)
    if choice is None:
        what = f"tpl-{name}: brain mask and T1w (or b0) at {resolution_mm:g} mm or finer"
        if not folder.is_dir():
            reason = f"there is no folder tpl-{name}"
        else:
            reason = "found: " + (", ".join(f"{s:g} mm" for s in spacings) or "no usable files")
        raise TemplateError(
            f"template {name} not available offline: looked for {what} in TEMPLATEFLOW_HOME={root} ({reason}); "
            f"fill that folder or set TEMPLATEFLOW_HOME to a filled TemplateFlow home"
        )
    picked = local[choice]
    if picked.spacing > resolution_mm + SPACING_TOLERANCE_MM:
        log.warning("template %s: no resolution of %g mm or finer; upsampling its %g mm images",
                    name, resolution_mm, picked.spacing)
    log.debug("template %s found in %.2f s", name, time.monotonic() - start)
    return _make_grid(name, resolution_mm, picked, root)


def _make_grid(name: str, resolution_mm: float, found: TemplateFiles, root: Path) -> TemplateGrid:
    files = dict(found.files)
    ref = nib.load(str(files["mask"]))
    for kind, path in files.items():
        img = nib.load(str(path))
        if not same_grid(img.shape, img.affine, ref.shape, ref.affine):
            raise TemplateError(
                f"{path}: not on the grid of {files['mask'].name} (TEMPLATEFLOW_HOME={root})"
            )
    if abs(found.spacing - resolution_mm) <= SPACING_TOLERANCE_MM and np.allclose(
        voxel_sizes(ref.affine), resolution_mm, atol=SPACING_TOLERANCE_MM
    ):
        shape, affine, label = tuple(ref.shape[:3]), ref.affine, found.label
    else:
        # a grid of our own: its res- label must not be one the template uses for another grid
        shape, affine = regrid(ref.affine, ref.shape[:3], resolution_mm)
        label = f"{resolution_mm:g}".replace(".", "p") + "mm"
    reference = files.get("t1w") or files.get("brain_t1w") or files["b0"]
    grid = TemplateGrid(
        name=name,
        resolution_mm=float(resolution_mm),
        shape=shape,
        affine=affine,
        t1w=reference,
        mask=files["mask"],
        brain_t1w=files.get("brain_t1w"),
        b0=files.get("b0"),
        source_resolution_mm=found.spacing,
        home=root,
        res_label=label,
    )
    log.info("template %s: %g mm grid %s from %s (%g mm)", name, resolution_mm, grid.shape,
             reference.name, found.spacing)
    return grid


def template_image(grid: TemplateGrid, kind: str = "t1w") -> np.ndarray:
    """The template's ``kind`` image on the grid (float32; the mask as bool)."""
    return resample_to_grid(grid.image(kind), grid, order=1, is_mask=kind == "mask")


def write_template_image(grid: TemplateGrid, kind: str, out_path: str | Path) -> Path:
    """Write the template's ``kind`` image on the grid (mask as uint8) to ``out_path``."""
    data = template_image(grid, kind)
    return save_image(data, grid.affine, out_path, dtype=np.uint8 if kind == "mask" else np.float32)
