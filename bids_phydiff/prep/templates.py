"""Templates from TemplateFlow and the voxel grid the data are resampled into.

A :class:`TemplateGrid` is a template at an output resolution: the grid (shape, voxel -> RAS+ mm affine)
plus the template's files (T1w, brain mask, and a b0-like image when the template has one). The files are
the template's own, at ``source_resolution_mm``; when that differs from the grid (e.g. a 4 mm grid made
from a 2 mm template) :func:`resample_to_grid` brings any of them onto the grid.

Files are looked up in the TemplateFlow home first (``home`` argument, else ``$TEMPLATEFLOW_HOME``, else
TemplateFlow's default cache), read at call time. Only when a needed file is absent there (and
``allow_download``) is the TemplateFlow client asked to fetch it; any failure becomes a
:class:`TemplateError` that names TEMPLATEFLOW_HOME and what was looked for, never a network stack trace.

Resolution labels (``res-XX``) are not millimetres in general (``MNI152NLin6Asym`` ``res-03`` is 0.5 mm), so
the spacing of a local file is read from its header, and that of a remote one from the template's
``template_description.json``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import NoInputError
from .nifti import save_image, voxel_sizes

log = logging.getLogger(__name__)

HOME_ENV = "TEMPLATEFLOW_HOME"
DEFAULT_TEMPLATE = "MNI152NLin6Asym"
"""FSL's MNI152 (the space of the XTRACT atlas)."""

SPACING_TOLERANCE_MM = 1e-3

IMAGE_KINDS = ("t1w", "brain_t1w", "mask", "b0")
# (suffix, desc) of each kind in TemplateFlow file names
_KIND_KEYS = {
    "t1w": ("T1w", None),
    "brain_t1w": ("T1w", "brain"),
    "mask": ("mask", "brain"),
    "b0": ("dwi", "b0"),
}
_ALLOWED_ENTITIES = {"res", "desc"}
_ENTITY = re.compile(r"^([a-zA-Z0-9]+)-([a-zA-Z0-9+]+)$")


class TemplateError(NoInputError, RuntimeError):
    """A template (or one of its files) that cannot be found or used; the message names TEMPLATEFLOW_HOME."""


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

    def same_grid(self, other: "TemplateGrid", atol: float = 1e-3) -> bool:
        """True when ``other`` has the same shape and affine (within ``atol`` mm)."""
        return self.shape == tuple(other.shape) and bool(np.allclose(self.affine, other.affine, atol=atol))

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


# ----------------------------------------------------------------------------------------------------------
# finding the files


def templateflow_home(home: str | Path | None = None) -> Path:
    """The TemplateFlow home: ``home``, else ``$TEMPLATEFLOW_HOME`` (read now), else TemplateFlow's default."""
    if home:
        return Path(home).expanduser().absolute()
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env).expanduser().absolute()
    from platformdirs import user_cache_dir  # what TemplateFlow itself uses

    return Path(user_cache_dir("templateflow")).absolute()


@dataclass(frozen=True)
class _Resolution:
    """The usable files of one resolution label of a template found locally."""

    label: str | None
    spacing: float
    files: dict  # kind -> Path


def _parse(path: Path, name: str) -> tuple[dict, str] | None:
    stem = path.name[: -len(".nii.gz")]
    parts = stem.split("_")
    if parts[0] != f"tpl-{name}" or len(parts) < 2:
        return None
    entities = {}
    for part in parts[1:-1]:
        match = _ENTITY.match(part)
        if match is None:
            return None
        entities[match.group(1)] = match.group(2)
    return entities, parts[-1]


def _local_resolutions(folder: Path, name: str) -> list[_Resolution]:
    """Resolutions of ``name`` whose brain mask and a reference image exist (non-empty) in ``folder``."""
    groups: dict = {}
    for path in sorted(folder.glob(f"tpl-{name}_*.nii.gz")):
        parsed = _parse(path, name)
        if parsed is None or not path.is_file() or path.stat().st_size == 0:
            continue  # zero bytes: a TemplateFlow placeholder that was never downloaded
        entities, suffix = parsed
        if set(entities) - _ALLOWED_ENTITIES:
            continue
        for kind, (want_suffix, want_desc) in _KIND_KEYS.items():
            if suffix == want_suffix and entities.get("desc") == want_desc:
                groups.setdefault(entities.get("res"), {})[kind] = path
    found = []
    for label, files in groups.items():
        if "mask" not in files or not ({"t1w", "brain_t1w", "b0"} & set(files)):
            continue
        try:
            zooms = nib.load(str(files["mask"])).header.get_zooms()[:3]
        except Exception as exc:
            raise TemplateError(f"{files['mask']}: cannot read this template file ({exc})") from None
        found.append(_Resolution(label, float(max(zooms)), files))
    return sorted(found, key=lambda r: r.spacing)


def _pick(spacings: list[float], wanted: float, allow_coarser: bool) -> int | None:
    """Index of the spacing to use: equal to ``wanted``, else the coarsest finer one, else (if allowed)
    the finest coarser one."""
    exact = [i for i, s in enumerate(spacings) if abs(s - wanted) <= SPACING_TOLERANCE_MM]
    if exact:
        return exact[0]
    finer = [i for i, s in enumerate(spacings) if s < wanted]
    if finer:
        return max(finer, key=lambda i: spacings[i])
    if allow_coarser and spacings:
        return min(range(len(spacings)), key=lambda i: spacings[i])
    return None


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
    local = _local_resolutions(folder, name) if folder.is_dir() else []
    spacings = [r.spacing for r in local]

    choice = _pick(spacings, resolution_mm, allow_coarser=False)
    if choice is None and allow_download:
        try:
            chosen = _download(name, resolution_mm, root, timeout_s)
        except TemplateError as exc:
            if not local:
                raise
            log.warning("%s; using a coarser local resolution instead", exc)
            chosen = None
        if chosen is not None:
            return _make_grid(name, resolution_mm, chosen, root)
    if choice is None:
        choice = _pick(spacings, resolution_mm, allow_coarser=True)
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


def _make_grid(name: str, resolution_mm: float, found: _Resolution, root: Path) -> TemplateGrid:
    files = dict(found.files)
    ref = nib.load(str(files["mask"]))
    for kind, path in files.items():
        img = nib.load(str(path))
        if tuple(img.shape[:3]) != tuple(ref.shape[:3]) or not np.allclose(img.affine, ref.affine, atol=1e-3):
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


def regrid(affine: np.ndarray, shape, spacing_mm: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """A grid covering the same box as (``affine``, ``shape``) with isotropic voxels of ``spacing_mm``.

    Axis directions are kept; the outer corner of the first voxel stays in place; the shape is rounded up.
    """
    affine = np.asarray(affine, dtype=np.float64)
    zooms = voxel_sizes(affine)
    directions = affine[:3, :3] / zooms
    extent = np.asarray(shape[:3], dtype=np.float64) * zooms
    new_shape = tuple(int(n) for n in np.ceil(extent / spacing_mm - 1e-6))
    corner = affine[:3, 3] - affine[:3, :3] @ np.full(3, 0.5)
    new = np.eye(4)
    new[:3, :3] = directions * spacing_mm
    new[:3, 3] = corner + new[:3, :3] @ np.full(3, 0.5)
    return new_shape, new


# ----------------------------------------------------------------------------------------------------------
# fetching through TemplateFlow (only when the local home lacks the files)


def _client(root: Path, timeout_s: float):
    """A TemplateFlow client on ``root``. TemplateFlow reads $TEMPLATEFLOW_HOME once, at import, and may
    write a skeleton there: point it at ``root`` for that import so nothing is written elsewhere."""
    import sys

    if "templateflow.conf" not in sys.modules:
        previous = os.environ.get(HOME_ENV)
        os.environ[HOME_ENV] = str(root)
        try:
            import templateflow.conf  # noqa: F401
        finally:
            if previous is None:
                os.environ.pop(HOME_ENV, None)
            else:
                os.environ[HOME_ENV] = previous
    from templateflow.client import TemplateFlowClient

    return TemplateFlowClient(root=root, timeout=max(1, int(math.ceil(timeout_s))), autoupdate=False)


TEMPLATEFLOW_HOST = "templateflow.s3.amazonaws.com"
"""Where TemplateFlow downloads from; probed first so that an offline machine fails at once."""


def _unreachable(host: str, timeout_s: float) -> str | None:
    """None when a TCP connection to ``host``:443 opens within ``timeout_s``, else the reason."""
    import socket
    import threading

    outcome: dict = {}

    def probe():
        try:
            with socket.create_connection((host, 443), timeout=timeout_s):
                outcome["ok"] = True
        except OSError as exc:
            outcome["error"] = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if "ok" in outcome:
        return None
    return outcome.get("error", f"no answer within {timeout_s:g} s")


def _remote_spacings(root: Path, name: str) -> dict:
    """res label -> spacing (mm) from ``template_description.json``; empty when it has none."""
    path = root / f"tpl-{name}" / "template_description.json"
    if not path.is_file() or path.stat().st_size == 0:
        return {}
    try:
        entries = json.loads(path.read_text()).get("res", {}) or {}
    except (OSError, ValueError):
        return {}
    out = {}
    for label, info in entries.items():
        spacing = info.get("grid_spacing") if isinstance(info, dict) else None
        if spacing is None and isinstance(info, dict) and info.get("zooms"):
            spacing = max(float(z) for z in info["zooms"])
        if spacing is not None:
            out[str(label)] = float(spacing)
    return out


def _download(name: str, resolution_mm: float, root: Path, timeout_s: float) -> _Resolution:
    """Fetch the T1w and brain mask of the best resolution through TemplateFlow."""
    looked_for = f"tpl-{name} T1w and brain mask at {resolution_mm:g} mm"
    offline = _unreachable(TEMPLATEFLOW_HOST, timeout_s)
    if offline:
        raise TemplateError(
            f"template {name} not available: looked for {looked_for} in TEMPLATEFLOW_HOME={root}, and "
            f"{TEMPLATEFLOW_HOST} cannot be reached to download it ({offline}). "
            f"Fill TEMPLATEFLOW_HOME (or point it at a filled TemplateFlow home) for offline use."
        )
    try:
        client = _client(root, timeout_s)
        listed = client.ls(name, suffix="mask", desc="brain", extension=".nii.gz")
        if not listed:
            raise TemplateError(
                f"template {name} is not known in TEMPLATEFLOW_HOME={root} (looked for {looked_for})"
            )
        spacings = _remote_spacings(root, name)
        labels = sorted(spacings)
        index = _pick([spacings[k] for k in labels], resolution_mm, allow_coarser=False)
        query: dict = {}
        spacing = resolution_mm
        if index is not None:
            query["resolution"] = int(labels[index]) if labels[index].isdigit() else labels[index]
            spacing = spacings[labels[index]]
        elif spacings:
            raise TemplateError(
                f"template {name} has no resolution of {resolution_mm:g} mm or finer "
                f"(TEMPLATEFLOW_HOME={root} lists {sorted(spacings.values())} mm)"
            )
        files = {}
        for kind in ("t1w", "mask"):
            suffix, desc = _KIND_KEYS[kind]
            got = client.get(name, suffix=suffix, desc=desc, extension=".nii.gz", **query)
            got = [got] if isinstance(got, Path) else list(got)
            if len(got) != 1:
                raise TemplateError(
                    f"template {name}: {len(got)} files match {kind} in TEMPLATEFLOW_HOME={root}"
                )
            files[kind] = got[0]
    except TemplateError:
        raise
    except Exception as exc:  # network, permissions, a broken home: one clear message
        reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise TemplateError(
            f"template {name} not available: looked for {looked_for} in TEMPLATEFLOW_HOME={root} and could "
            f"not download it ({type(exc).__name__}: {reason}). Fill TEMPLATEFLOW_HOME for offline use."
        ) from None
    label = query.get("resolution")
    return _Resolution(None if label is None else f"{int(label):02d}" if isinstance(label, int) else label,
                       spacing, files)


# ----------------------------------------------------------------------------------------------------------
# images on the grid


def resample_to_grid(path: str | Path, grid: TemplateGrid, order: int = 1, is_mask: bool = False) -> np.ndarray:
    """Values of the image at ``path`` (3D or 4D, any grid in the same world space) on ``grid``.

    ``order`` 0 (labels), 1 (linear) or 3 (cubic). Down-sampling smooths first (Gaussian matched to the
    voxel size change) unless ``order`` is 0. ``is_mask`` returns a boolean (linear, then >= 0.5).
    Integer translations (padding, cropping) copy voxels without interpolation. Outside the image: 0.
    """
    from scipy import ndimage

    img = nib.load(str(path))
    data = np.asarray(img.dataobj, dtype=np.float32)
    vox2vox = np.linalg.inv(img.affine) @ grid.affine
    linear, offset = vox2vox[:3, :3], vox2vox[:3, 3]
    if np.allclose(linear, np.eye(3), atol=1e-6) and np.allclose(offset, np.round(offset), atol=1e-4):
        out = _shift_copy(data, np.round(offset).astype(int), grid.shape)
        return out >= 0.5 if is_mask else out
    if is_mask:
        order = 1
    sigma = None
    if order > 0:
        ratio = voxel_sizes(grid.affine) / voxel_sizes(img.affine)
        if np.any(ratio > 1.01):
            sigma = np.sqrt(np.clip(ratio**2 - 1.0, 0.0, None)) / (2.0 * math.sqrt(2.0 * math.log(2.0)))

    def one(volume):
        if sigma is not None:
            volume = ndimage.gaussian_filter(volume, sigma, mode="nearest")
        return ndimage.affine_transform(volume, linear, offset=offset, output_shape=grid.shape, order=order,
                                        mode="constant", cval=0.0, prefilter=order > 1)

    if data.ndim == 3:
        out = one(data)
    else:
        out = np.stack([one(data[..., i]) for i in range(data.shape[3])], axis=-1)
    out = out.astype(np.float32)
    return out >= 0.5 if is_mask else out


def template_image(grid: TemplateGrid, kind: str = "t1w") -> np.ndarray:
    """The template's ``kind`` image on the grid (float32; the mask as bool)."""
    return resample_to_grid(grid.image(kind), grid, order=1, is_mask=kind == "mask")


def write_template_image(grid: TemplateGrid, kind: str, out_path: str | Path) -> Path:
    """Write the template's ``kind`` image on the grid (mask as uint8) to ``out_path``."""
    data = template_image(grid, kind)
    return save_image(data, grid.affine, out_path, dtype=np.uint8 if kind == "mask" else np.float32)


def _shift_copy(data: np.ndarray, offset: np.ndarray, shape) -> np.ndarray:
    """out[i] = data[i + offset] where defined, 0 elsewhere (spatial axes only)."""
    out = np.zeros(tuple(shape) + data.shape[3:], dtype=data.dtype)
    src, dst = [], []
    for axis in range(3):
        lo = max(0, -offset[axis])
        hi = min(shape[axis], data.shape[axis] - offset[axis])
        if hi <= lo:
            return out
        dst.append(slice(lo, hi))
        src.append(slice(lo + offset[axis], hi + offset[axis]))
    out[tuple(dst)] = data[tuple(src)]
    return out


def pad_to_multiple(grid: TemplateGrid, multiple: int, axes: tuple[int, ...] = (0, 1)) -> TemplateGrid:
    """``grid`` grown along ``axes`` to a multiple of ``multiple`` voxels, evenly on both sides (the extra
    voxel, if odd, at the end). World positions of the existing voxels do not change."""
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    shape = list(grid.shape)
    before = np.zeros(3)
    for axis in axes:
        total = (-shape[axis]) % multiple
        before[axis] = total // 2
        shape[axis] += total
    affine = np.array(grid.affine)
    affine[:3, 3] = grid.affine[:3, 3] - grid.affine[:3, :3] @ before
    return replace(grid, shape=tuple(shape), affine=affine)


def place_on_grid(data: np.ndarray, source: TemplateGrid, target: TemplateGrid, fill: float = 0.0) -> np.ndarray:
    """Move an array ``(X, Y, Z, ...)`` from ``source`` to ``target`` when the two grids differ only by whole
    voxels (padding or cropping, e.g. :func:`pad_to_multiple`); voxels new to ``target`` get ``fill``."""
    data = np.asarray(data)
    if tuple(data.shape[:3]) != source.shape:
        raise ValueError(f"array of shape {data.shape} is not on the source grid {source.shape}")
    vox2vox = np.linalg.inv(source.affine) @ target.affine
    offset = vox2vox[:3, 3]
    if not np.allclose(vox2vox[:3, :3], np.eye(3), atol=1e-6) or not np.allclose(offset, np.round(offset), atol=1e-4):
        raise ValueError("the grids are not whole-voxel shifts of each other; resample instead")
    out = _shift_copy(data, np.round(offset).astype(int), target.shape)
    if fill:
        inside = _shift_copy(np.ones(source.shape, dtype=bool), np.round(offset).astype(int), target.shape)
        out[~inside] = fill
    return out
