"""Input checks before any work starts (DESIGN.md section 6): the dataset tree, then each DWI run.

Each failure raises an error whose message names the file and the problem: 65 (:class:`InputDataError`)
for content that cannot be used, 66 (:class:`NoInputError`) for a file that cannot be read. A missing T1w
is not an error: the run is registered to the template directly.
"""

from __future__ import annotations

import json
import logging
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputDataError, NoInputError
from ..prep.gradients import B0_THRESHOLD, GradientTable, check_unit_length, read_fsl
from .layout import DwiRun

LOGGER = logging.getLogger(__name__)

MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays/objects accepted in a JSON file. BIDS metadata is a few levels deep; a deeper
file is refused before a recursive reader (Python's json, pybids) reaches the interpreter's recursion limit."""

MAX_DEFLATE_RATIO = 1032
"""Deflate (gzip) cannot expand a byte of compressed stream into more than about 1032 bytes."""

_LABEL = re.compile(r"[A-Za-z0-9]+")
"""BIDS labels and indices: ASCII letters and digits."""

_NOT_INDEXED = re.compile(r"(code|models|sourcedata|stimuli|derivatives)")
"""Top-level folders pybids does not index (with names starting with '.', at any level)."""


@dataclass(frozen=True)
class CheckedRun:
    """A DWI run that passed the checks, with what was learnt on the way."""

    run: DwiRun
    shape: tuple[int, ...]
    """(X, Y, Z, N)"""
    zooms: tuple[float, ...]
    """voxel size in mm, (3,)"""
    gradients: GradientTable
    n_b0: int
    shells: tuple[float, ...]


# ------------------------------------------------------------------------------------------ the dataset tree


def read_json(path: Path, what: str = "JSON file") -> dict:
    """The JSON object in ``path``; :class:`NoInputError` when it cannot be read, :class:`InputDataError`
    when it is not valid JSON, is not an object or nests deeper than :data:`MAX_JSON_DEPTH`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputDataError(f"{path}: the {what} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise NoInputError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputDataError(f"{path}: the {what} is not valid JSON ({exc})") from None
    except RecursionError:
        raise InputDataError(f"{path}: the {what} nests deeper than {MAX_JSON_DEPTH} levels") from None
    if not isinstance(data, dict):
        raise InputDataError(f"{path}: the {what} must hold a JSON object, found {type(data).__name__}")
    if _depth(data) > MAX_JSON_DEPTH:
        raise InputDataError(f"{path}: the {what} nests deeper than {MAX_JSON_DEPTH} levels")
    return data


def _depth(value) -> int:
    """Nesting depth of parsed JSON (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is not None:
            deepest = max(deepest, level + 1)
            stack.extend((child, level + 1) for child in children)
    return deepest


def check_dataset(bids_dir: Path) -> None:
    """Walk the dataset as pybids will index it, before pybids or the validator read it.

    Refuses, naming the path: a folder that cannot be listed or a JSON file that cannot be read (66); a
    folder symlink to a folder that contains it, which pybids would follow forever (65); a JSON file that
    is not a valid, shallow JSON object (65, :func:`read_json`). Symlinks to other folders are followed,
    as pybids does; other files are checked when a run uses them (:func:`check_dwi_run`).
    """
    root = Path(bids_dir)
    stack = [(root, (root.resolve(),))]  # a folder and the real paths of it and its ancestors
    while stack:
        folder, chain = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            raise NoInputError(f"{folder}: cannot list the folder ({exc.strerror or exc})") from None
        for entry in entries:
            if entry.name.startswith(".") or (folder == root and _NOT_INDEXED.match(entry.name)):
                continue
            path = Path(entry.path)
            if entry.is_dir():  # follows symlinks
                real = path.resolve()
                if real in chain:
                    raise InputDataError(
                        f"{path}: a symbolic link to {real}, a folder that contains it; the dataset would be "
                        "endless (remove the link)"
                    )
                stack.append((path, chain + (real,)))
            elif entry.name.endswith(".json"):
                read_json(path, "dataset description" if folder == root and entry.name ==
                          "dataset_description.json" else "JSON sidecar")


# ------------------------------------------------------------------------------------------ one DWI run


def _load_nifti(path: Path, what: str):
    """The image header (data not read); 66 when the file cannot be read, 65 when it is not NIfTI or its
    header claims more data than the file can hold (:func:`check_data_size`)."""
    import nibabel as nib

    if path.exists() and not os.access(path, os.R_OK):  # nibabel would report it as not NIfTI
        raise NoInputError(f"{path}: cannot read the {what} (permission denied)")
    try:
        img = nib.load(str(path))
    except FileNotFoundError:
        raise NoInputError(f"{path}: the {what} does not exist (a broken symbolic link?)") from None
    except PermissionError as exc:
        raise NoInputError(f"{path}: cannot read the {what} ({exc.strerror})") from None
    except Exception as exc:  # nibabel raises several types for unreadable files
        raise InputDataError(f"{path}: cannot read the {what} as NIfTI ({exc})") from None
    check_data_size(img, path)
    return img


def _available_memory() -> int | None:
    """Bytes of memory available to new allocations (``MemAvailable`` of /proc/meminfo); None if unknown."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_data_size(img, path: Path) -> None:
    """Refuse a header that claims more voxel data than the file can hold, before any voxel is read.

    The claim is the header's data offset plus product(shape) x bytes per voxel of its data type.
    - ``.nii``: the file must be at least that long.
    - ``.nii.gz``: the uncompressed size is not known without decompressing, so the claim must not exceed
      :data:`MAX_DEFLATE_RATIO` x the compressed file size, the most gzip can expand a file.
    - either: one float32 copy of all voxels (what preparing a run holds) must fit in the available
      memory when that is known; a header lying by orders of magnitude fails here at the latest.
    """
    shape = tuple(int(s) for s in img.shape)
    n_voxels = int(np.prod(shape, dtype=object))
    claimed = int(img.dataobj.offset) + n_voxels * np.dtype(img.get_data_dtype()).itemsize
    size = path.stat().st_size
    compressed = path.name.endswith(".gz")
    limit = size * MAX_DEFLATE_RATIO if compressed else size
    if claimed > limit:
        holds = f"a {size}-byte gzip file holds at most {limit} bytes" if compressed else f"the file has {size}"
        raise InputDataError(
            f"{path}: the header claims {claimed} bytes of image {shape} {img.get_data_dtype()}, but {holds} "
            "(a truncated file or a wrong header)"
        )
    available = _available_memory()
    needed = n_voxels * 4
    if available is not None and needed > available:
        raise InputDataError(
            f"{path}: image {shape} needs {needed / 2**30:.1f} GiB as float32 but {available / 2**30:.1f} GiB "
            "of memory is available"
        )


def check_voxels(img, path: Path) -> None:
    """Read every voxel once, volume by volume in file order (memory: one volume; one pass through a
    .nii.gz): raise if the file ends early or is corrupt (65) or, unless the data are integers with finite
    scaling, if a voxel is NaN or Inf (65)."""
    from nibabel.openers import ImageOpener

    shape = tuple(int(s) for s in img.shape)
    dtype = np.dtype(img.get_data_dtype())
    slope, inter = img.dataobj.slope, img.dataobj.inter
    exact = np.issubdtype(dtype, np.integer) and np.all(np.isfinite([slope, inter]))
    spatial = shape[:3]
    n = int(np.prod(shape[3:], dtype=np.int64))
    nbytes = int(np.prod(spatial, dtype=np.int64)) * dtype.itemsize
    try:
        with ImageOpener(str(path), "rb") as handle:
            handle.seek(int(img.dataobj.offset))
            for i in range(n):
                data = handle.read(nbytes)
                if len(data) != nbytes:
                    raise InputDataError(f"{path}: the file ends in volume {i} of {n} (a truncated file)")
                if exact:
                    continue  # finitely scaled integers cannot be NaN or Inf
                vol = np.frombuffer(data, dtype).reshape(spatial, order="F")
                if np.issubdtype(dtype, np.integer):
                    vol = vol * float(slope) + float(inter)
                bad = ~np.isfinite(vol)
                if bad.any():
                    where = tuple(int(c) for c in np.argwhere(bad)[0])
                    raise InputDataError(
                        f"{path}: {int(bad.sum())} NaN/Inf voxel(s) in volume {i} (first at voxel {where})"
                    )
    except (OSError, EOFError, zlib.error) as exc:
        raise InputDataError(f"{path}: cannot read the voxels (a truncated or corrupt file: {exc})") from None


def check_labels(run: DwiRun) -> None:
    """Every entity of the file name is ``key-label`` with ASCII letters and digits (the BIDS rule), so
    that output names built from them are valid BIDS names."""
    for key, value in run.entities:
        if not (_LABEL.fullmatch(key) and _LABEL.fullmatch(value)):
            raise InputDataError(
                f"{run.dwi}: entity '{key}-{value}' is not a BIDS label (ASCII letters and digits only); "
                "rename the file"
            )


def check_dwi_run(run: DwiRun, b0_threshold: float = B0_THRESHOLD) -> CheckedRun:
    """Check one run: BIDS labels, a 4D image, matching bval/bvec, unit b-vectors, a b0 volume, every
    voxel readable and finite, a 3D T1w."""
    check_labels(run)
    if run.bval is None:
        raise InputDataError(f"{run.dwi}: no .bval file (looked beside it and up the BIDS inheritance chain)")
    if run.bvec is None:
        raise InputDataError(f"{run.dwi}: no .bvec file (looked beside it and up the BIDS inheritance chain)")
    img = _load_nifti(run.dwi, "DWI")
    shape = tuple(int(s) for s in img.shape)
    if len(shape) != 4 or shape[3] < 2:
        raise InputDataError(
            f"{run.dwi}: image is {len(shape)}D with shape {shape}; a DWI run needs a 4D series "
            "with one volume per gradient"
        )
    table = read_fsl(run.bval, run.bvec)
    if len(table) != shape[3]:
        raise InputDataError(
            f"{run.bval}: {len(table)} b-values but {run.dwi.name} has {shape[3]} volumes"
        )
    b0 = table.b0_mask(b0_threshold)
    if not b0.any():
        raise InputDataError(
            f"{run.bval}: no b0 volume (no b-value <= {b0_threshold:g} s/mm^2); a b0 is needed as the "
            "reference and the model's input (see --b0-threshold)"
        )
    if b0.all():
        raise InputDataError(f"{run.bval}: every volume is a b0; there is no diffusion weighting")
    check_unit_length(table, run.bvec, b0_threshold)
    check_voxels(img, run.dwi)
    if run.t1w is not None:
        t1 = _load_nifti(run.t1w, "T1w")
        if len(t1.shape) != 3 and not (len(t1.shape) == 4 and t1.shape[3] == 1):
            raise InputDataError(f"{run.t1w}: a T1w must be a 3D image, found shape {t1.shape}")
        check_voxels(t1, run.t1w)
    if run.mask is not None:
        check_given_mask(run.mask, img, run.dwi)
    return CheckedRun(
        run=run,
        shape=shape,
        zooms=tuple(float(z) for z in img.header.get_zooms()[:3]),
        gradients=table,
        n_b0=int(b0.sum()),
        shells=tuple(float(s) for s in table.shells(b0_threshold)),
    )


def check_given_mask(mask: Path, dwi_img, dwi: Path) -> None:
    """The brain mask of a preprocessed run: a 3D image on the DWI's grid, of 0s and 1s, not empty."""
    from ..prep.grid import same_grid

    img = _load_nifti(mask, "brain mask")
    shape = tuple(int(s) for s in img.shape)
    if len(shape) != 3 and not (len(shape) == 4 and shape[3] == 1):
        raise InputDataError(f"{mask}: a brain mask must be a 3D image, found shape {shape}")
    if not same_grid(shape, img.affine, dwi_img.shape, dwi_img.affine):
        raise InputDataError(f"{mask}: not on the grid of {dwi.name} (shape {shape[:3]} vs "
                             f"{tuple(dwi_img.shape[:3])}, or another affine); the mask must come from the same "
                             "preprocessing")
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises several types for a corrupt file
        raise InputDataError(f"{mask}: cannot read the voxels ({exc})") from None
    values = np.unique(data)
    if not np.isin(values, (0, 1)).all():
        raise InputDataError(f"{mask}: a brain mask holds 0 and 1 only, found {values.size} distinct values, e.g. "
                             f"{values[:4].tolist()}")
    if not (values == 1).any():
        raise InputDataError(f"{mask}: the brain mask is empty")


def check_runs(runs: list[DwiRun], b0_threshold: float = B0_THRESHOLD) -> list[CheckedRun]:
    """Check every run before any work starts, so a bad file stops the run with nothing written. Two runs
    whose outputs would have the same names (the same file reached twice, e.g. through a folder symlink)
    are refused (for preprocessed input: one acquisition given in two spaces)."""
    seen: dict[tuple[Path, str], Path] = {}
    for run in runs:
        other = seen.setdefault((run.rel_dir, run.prefix), run.dwi)
        if other != run.dwi and run.preprocessed:
            raise InputDataError(
                f"{run.dwi}: the same acquisition as {other.name} in another space or resolution; choose one "
                'with --bids-filter-file, e.g. {"dwi": {"space": "T1w"}}'
            )
        if other != run.dwi:
            raise InputDataError(
                f"{run.dwi}: same entities as {other}, so their outputs would have the same names "
                "(a copy, or one file reached twice through a symbolic link?)"
            )
    checked = [check_dwi_run(run, b0_threshold) for run in runs]
    for c in checked:
        LOGGER.info(
            "%s: %s, %d b0 + shells %s%s",
            c.run.dwi.name,
            "x".join(map(str, c.shape)),
            c.n_b0,
            "/".join(f"{s:g}" for s in c.shells),
            "" if c.run.t1w else " (no T1w)",
        )
    return checked
