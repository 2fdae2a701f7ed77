"""Prepared runs made directly from a phantom dataset, for tests, benchmarks and smoke runs.

Not imported by :mod:`bids_phydiff.phantom`'s package namespace: the generator stands alone (numpy and
nibabel), while this helper needs the prepare functions and the model's grid type.

Stands in for the participant level: each subject's DWI is taken as if it were already in template
space (the phantom's subjects share one field of view; with ``rotation_deg = translation_mm =
deformation_mm = 0`` they are also aligned), LAS images are flipped to RAS (the FSL b-vectors stay valid:
flipping the first voxel axis and the sign rule of the FSL convention cancel), the in-plane size is
centre-cropped or zero-padded to ``in_plane``, and the b0 reference and brain mask are computed with
:mod:`bids_phydiff.prep`. Every run ends up on one grid, returned as a :class:`GridSpec`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from ..bids.prepared import PreparedRun
from ..model.bundle import GridSpec
from ..prep.b0 import b0_reference
from ..prep.gradients import read_bvals
from ..prep.grid import same_grid
from ..prep.mask import brain_mask


def _fit(data: np.ndarray, size: int, axis: int) -> tuple[np.ndarray, int]:
    """Centre-crop or zero-pad ``axis`` to ``size``; returns the array and the voxel offset of index 0."""
    n = data.shape[axis]
    if n >= size:
        lo = (n - size) // 2
        return np.take(data, np.arange(lo, lo + size), axis=axis), lo
    before = (size - n) // 2
    pad = [(0, 0)] * data.ndim
    pad[axis] = (before, size - n - before)
    return np.pad(data, pad), -before


def phantom_prepared_runs(dwi_files: list[tuple[str, Path]], out_dir: Path, template: str = "Phantom",
                          in_plane: tuple[int, int] | None = None) -> tuple[list[PreparedRun], GridSpec]:
    """Write ``out_dir/<dwi stem>_{dwi.nii.gz,dwi.bval,dwi.bvec,mask.nii.gz,b0ref.nii.gz}`` per ``(label, dwi)``.

    Returns the runs and their common grid (shape (X, Y, Z), affine RAS mm). ValueError when the
    subjects' grids differ in shape or voxel size.
    """
    import nibabel as nib

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs, grid = [], None
    for label, dwi_path in dwi_files:
        img = nib.load(str(dwi_path))
        data = np.asarray(img.dataobj, dtype=np.float32)
        affine = img.affine.copy()
        if affine[0, 0] < 0:  # LAS -> RAS
            data = data[::-1].copy()
            affine = affine @ np.array([[-1, 0, 0, data.shape[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
        if in_plane is not None:
            for axis, size in enumerate(in_plane):
                data, offset = _fit(data, size, axis)
                affine[:3, 3] += affine[:3, axis] * offset
        stem = str(dwi_path).removesuffix(".nii.gz")
        bvals = read_bvals(stem + ".bval")
        b0 = b0_reference(data, bvals)
        zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        mask = brain_mask(b0, zooms)
        prefix = out_dir / Path(dwi_path).name.removesuffix(".nii.gz").removesuffix("_dwi")
        run = PreparedRun(label, Path(f"{prefix}_dwi.nii.gz"), Path(f"{prefix}_dwi.bval"), Path(f"{prefix}_dwi.bvec"),
                          Path(f"{prefix}_mask.nii.gz"), Path(f"{prefix}_b0ref.nii.gz"))
        nib.Nifti1Image(data, affine).to_filename(str(run.dwi))
        nib.Nifti1Image(b0, affine).to_filename(str(run.b0ref))
        nib.Nifti1Image(mask.astype(np.uint8), affine).to_filename(str(run.mask))
        shutil.copyfile(stem + ".bval", run.bval)
        shutil.copyfile(stem + ".bvec", run.bvec)
        spec = GridSpec(template, float(zooms[0]), data.shape[:3], affine.tolist())
        if grid is not None and not same_grid(grid.shape, grid.affine, spec.shape, spec.affine):
            raise ValueError(f"{dwi_path}: grid {spec.shape} differs from the first subject's {grid.shape}")
        grid = grid or spec
        runs.append(run)
    return runs, grid


def phantom_training_data(root: Path, in_plane: tuple[int, int] | None = (32, 32), **phantom: object
                          ) -> tuple[list[PreparedRun], GridSpec, np.ndarray, object]:
    """Generate a phantom under ``root/bids`` (``PhantomConfig(**phantom)``, RAS-only by default) and prepare it.

    Returns ``(runs, grid, tracts (X, Y, Z, K) on the grid, the PhantomDataset)``.
    """
    import nibabel as nib

    from . import PhantomConfig, generate
    from ..prep.tracts import resample_channels

    root = Path(root)
    settings = {"subjects": 3, "resolution": 4.0, "seed": 0, **phantom}
    dataset = generate(root / "bids", PhantomConfig(**settings), overwrite=True)
    files = [(s, f) for s in dataset.subjects for f in dataset.dwi_files(s)]
    runs, grid = phantom_prepared_runs(files, root / "prepared", dataset.template_name, in_plane)
    atlas = nib.load(str(dataset.atlas_probseg))
    tracts = resample_channels(np.asarray(atlas.dataobj, dtype=np.float32), atlas.affine, grid.shape,
                               np.asarray(grid.affine))
    return runs, grid, tracts, dataset
