"""One-step resampling of DWI into the template grid through composed transforms, and back.

The registrations of a run (b0 -> T1w, T1w -> template, or b0 -> template) are composed into one ITK
composite transform and written as ``.h5`` files: the forward one (DWI -> template: it resamples a DWI-space
image onto the template grid; it maps template points to DWI points) and the inverse one (template -> DWI).
Every DWI volume is interpolated once, from its native grid straight into the template grid.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

from ..atomic import atomic_path
from .ants_runtime import AntsError, ants_session
from .nifti import load_image, save_image
from .templates import TemplateGrid
from .transforms import TransformChain

log = logging.getLogger(__name__)

INTERPOLATORS = {"linear": "linear", "bspline": "bSpline", "nearest": "nearestNeighbor", "label": "genericLabel"}


def _ants_transform(ants, path: Path, invert: bool):
    if not path.is_file():
        raise AntsError(f"{path}: transform file not found")
    if invert and path.suffix != ".mat":
        raise AntsError(f"{path}: only linear (.mat) transforms can be inverted")
    tx = ants.read_transform(str(path))
    return tx.invert() if invert else tx


def write_composite(files, invert, out_path: str | Path, work_dir: str | Path, threads: int = 1) -> Path:
    """Compose ANTs transform ``files`` (ANTs order, ``invert`` flags) into one ITK composite ``.h5``.

    ``ants.apply_transforms(..., transformlist=[out_path])`` then does what the whole list did.
    """
    out_path = Path(out_path)
    files = [Path(f) for f in files]
    if len(files) != len(invert):
        raise ValueError("one invert flag per transform file is needed")
    if out_path.suffix != ".h5":
        raise ValueError(f"{out_path}: composite transforms are written as .h5")
    with ants_session(work_dir, threads) as ants:
        transforms = [_ants_transform(ants, f, inv) for f, inv in zip(files, invert)]
        composite = ants.compose_ants_transforms(transforms)
        with atomic_path(out_path) as tmp:
            ants.write_transform(composite, str(tmp))
    return out_path


def write_transforms(chain: TransformChain, forward_path: str | Path, inverse_path: str | Path,
                     work_dir: str | Path, threads: int = 1) -> tuple[Path, Path]:
    """Write ``chain`` (DWI -> template) as the forward and inverse composite ``.h5`` files."""
    forward = write_composite(chain.forward, chain.forward_invert, forward_path, work_dir, threads)
    inverse = write_composite(chain.inverse, chain.inverse_invert, inverse_path, work_dir, threads)
    return forward, inverse


@contextlib.contextmanager
def _reference_file(grid_or_path, work_dir: Path):
    """A 3D NIfTI defining the output grid: the given 3D image, or a temporary file in ``work_dir`` for a
    :class:`TemplateGrid` or for the first volume's grid of a 4D image (removed afterwards)."""
    if not isinstance(grid_or_path, TemplateGrid):
        path = Path(grid_or_path)
        img = load_image(path, ndim=(3, 4), what="reference image")
        if len(img.shape) == 3:
            yield path
            return
        ref = nib.Nifti1Image(np.zeros(img.shape[:3], dtype=np.uint8), img.affine)
        ref.set_qform(*img.get_qform(coded=True))
        ref.set_sform(*img.get_sform(coded=True))
    else:
        ref = grid_or_path.reference_image()
    handle, name = tempfile.mkstemp(prefix="reference-", suffix=".nii.gz", dir=work_dir)
    os.close(handle)
    try:
        nib.save(ref, name)
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


def resample_series(
    image_path: str | Path,
    transforms,
    reference,
    out_path: str | Path,
    work_dir: str | Path,
    threads: int = 1,
    interpolation: str = "linear",
    invert=None,
    clip_negative: bool = True,
    volume_transforms=None,
) -> Path:
    """Resample a 3D or 4D image onto ``reference`` (a :class:`TemplateGrid` or an image path) through
    ``transforms`` (an ``.h5`` path or a list in ANTs order, with ``invert`` flags), one interpolation per
    volume. Negative values (from B-spline overshoot) are set to 0 when ``clip_negative``. Written as float32
    with the reference's affine; the 4th-dimension zoom of a 4D input is kept.

    ``volume_transforms``: one more transform file per volume (e.g. its head-motion correction, mapping
    points of the b0 reference to that volume), acting last on the point, so each volume goes through its
    own composed chain and is still interpolated once."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    if interpolation not in INTERPOLATORS:
        raise ValueError(f"interpolation must be one of {sorted(INTERPOLATORS)}, got {interpolation!r}")
    files = [Path(transforms)] if isinstance(transforms, (str, Path)) else [Path(t) for t in transforms]
    invert = [False] * len(files) if invert is None else [bool(b) for b in invert]
    extra = None if volume_transforms is None else [Path(f) for f in volume_transforms]
    for f in files + (extra or []):
        if not f.is_file():
            raise AntsError(f"{f}: transform file not found")
    source = load_image(image_path, ndim=(3, 4), what="image to resample")
    n_volumes = source.shape[3] if len(source.shape) == 4 else 1
    if extra is not None and len(extra) != n_volumes:
        raise ValueError(f"{len(extra)} per-volume transforms for {n_volumes} volume(s) of {image_path}")
    with _reference_file(reference, work_dir) as ref_path, ants_session(work_dir, threads) as ants:
        ref_img = nib.load(str(ref_path))
        ref_affine = ref_img.affine
        fixed = ants.image_read(str(ref_path))
        moving = ants.image_read(str(image_path))
        volumes = [moving] if moving.dimension == 3 else ants.ndimage_to_list(moving)
        out = np.zeros(tuple(ref_img.shape[:3]) + ((len(volumes),) if len(source.shape) == 4 else ()), dtype=np.float32)
        for i, volume in enumerate(volumes):
            chain, flags = [str(f) for f in files], list(invert)
            if extra is not None:
                chain, flags = chain + [str(extra[i])], flags + [False]
            warped = ants.apply_transforms(fixed, volume.clone("float"), chain,
                                           interpolator=INTERPOLATORS[interpolation], whichtoinvert=flags,
                                           defaultvalue=0)
            data = warped.numpy().astype(np.float32)
            if len(source.shape) == 4:
                out[..., i] = data
            else:
                out[...] = data
    if clip_negative:
        np.maximum(out, 0.0, out=out)
    template = source if len(source.shape) == 4 else None
    return save_image(out, ref_affine, out_path, dtype=np.float32, template=template)


def resample_dwi(
    dwi_path: str | Path,
    forward_transform: str | Path,
    grid: TemplateGrid,
    out_path: str | Path,
    work_dir: str | Path,
    threads: int = 1,
    interpolation: str = "linear",
) -> Path:
    """Every volume of the DWI series at ``dwi_path`` on the template ``grid`` through the composite
    DWI -> template transform ``forward_transform`` (``.h5``), one interpolation each, clipped at 0."""
    img = load_image(dwi_path, ndim=(3, 4), what="DWI")
    log.info("resampling %s (%s) into %s %g mm %s", Path(dwi_path).name, img.shape, grid.name, grid.resolution_mm,
             grid.shape)
    return resample_series(dwi_path, forward_transform, grid, out_path, work_dir, threads, interpolation)


def resample_mask(mask_path: str | Path, transforms, reference, out_path: str | Path, work_dir: str | Path,
                  threads: int = 1, invert=None) -> Path:
    """A binary mask through ``transforms`` onto ``reference`` (linear interpolation, then >= 0.5; uint8)."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix="mask-float-", suffix=".nii.gz", dir=work_dir)
    os.close(handle)
    tmp = Path(name)
    try:
        resample_series(mask_path, transforms, reference, tmp, work_dir, threads, "linear", invert)
        img = nib.load(str(tmp))
        data = np.asarray(img.dataobj) >= 0.5
        return save_image(data, img.affine, out_path, dtype=np.uint8)
    finally:
        tmp.unlink(missing_ok=True)


def to_native(
    image_path: str | Path,
    inverse_transform: str | Path,
    native_reference: str | Path,
    out_path: str | Path,
    work_dir: str | Path,
    threads: int = 1,
    interpolation: str = "linear",
) -> Path:
    """A template-space image (3D or 4D) back onto the native DWI grid of ``native_reference`` (the DWI
    series or its b0 reference) through the composite template -> DWI transform ``inverse_transform``."""
    return resample_series(image_path, inverse_transform, native_reference, out_path, work_dir, threads,
                           interpolation)
