"""2-D axial slices of prepared runs, as training samples for Phy-Diff.

A sample is one (run, diffusion-weighted volume, slice): the normalised b0 slice, the normalised target
slice, its b-value (s/mm^2) and b-vector (FSL convention of the template grid), the continuous slice
position in [0, 1], the ADC-atlas slice for that b-value (mm^2/s) and, optionally, the tract
probabilities. For a model with a context (``context`` ``dti``/``sh4``) a sample is also one of the run's
context shells, drawn with the sample (so uniformly at random over the shells): it carries that shell's
context maps ``(C, H, W)`` (:mod:`.context`), and its target may be any volume, of that shell or another. Images are ``(C, H, W)`` on the padded model grid, H and W the template's first two axes.

Volumes are read once into uncompressed, normalised ``.npy`` caches in the work dir and then memory
mapped, so memory stays flat as subjects are added.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..bids.prepared import PreparedRun
from ..prep.gradients import B0_THRESHOLD, read_fsl
from .normalise import Normaliser

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class SliceGrid:
    """The template grid ``shape`` (X, Y, Z) and the in-plane padded model grid (H, W), centred."""

    shape: tuple[int, int, int]
    padded: tuple[int, int]

    @classmethod
    def for_multiple(cls, shape: tuple[int, int, int], multiple: int) -> "SliceGrid":
        """Pad X and Y up to a multiple of ``multiple`` (patch size * 2^(levels-1))."""
        padded = tuple(int(np.ceil(s / multiple) * multiple) for s in shape[:2])
        return cls(tuple(int(s) for s in shape), padded)

    @property
    def offsets(self) -> tuple[int, int]:
        return tuple((p - s) // 2 for p, s in zip(self.padded, self.shape[:2]))

    def pad(self, image: np.ndarray, value: float = 0.0) -> np.ndarray:
        """``(..., X, Y)`` -> ``(..., H, W)``, centred, filled with ``value``."""
        ox, oy = self.offsets
        out = np.full(image.shape[:-2] + tuple(self.padded), value, dtype=np.float32)
        out[..., ox : ox + self.shape[0], oy : oy + self.shape[1]] = image
        return out

    def crop(self, image):
        """``(..., H, W)`` -> ``(..., X, Y)`` (numpy or torch)."""
        ox, oy = self.offsets
        return image[..., ox : ox + self.shape[0], oy : oy + self.shape[1]]

    def position(self, z: int | np.ndarray) -> np.ndarray:
        """Continuous slice position in [0, 1] of axial index ``z``."""
        return np.asarray(z, dtype=np.float32) / max(self.shape[2] - 1, 1)


@dataclass(frozen=True)
class RunCache:
    """Memory-mapped normalised volumes of one run: ``dwi`` (N, Z, X, Y), ``b0``/``mask`` (Z, X, Y)."""

    dwi: np.ndarray
    b0: np.ndarray
    mask: np.ndarray
    bvals: np.ndarray
    bvecs: np.ndarray
    scale: float
    folder: Path | None = None


def _cache_key(run: PreparedRun) -> str:
    h = hashlib.sha256()
    for path in run.arrays:
        stat = Path(path).stat()
        h.update(f"{Path(path).resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def cache_run(run: PreparedRun, cache_dir: Path) -> RunCache:
    """Write (once) and memory-map the normalised arrays of ``run``."""
    import nibabel as nib

    folder = Path(cache_dir) / f"sub-{run.subject}_{_cache_key(run)}"
    done = folder / "done"
    if not done.exists():
        folder.mkdir(parents=True, exist_ok=True)
        mask = np.asarray(nib.load(str(run.mask)).dataobj) > 0
        b0 = np.asarray(nib.load(str(run.b0ref)).dataobj, dtype=np.float32)
        norm = Normaliser.from_b0(b0, mask)
        img = nib.load(str(run.dwi))
        n = img.shape[3]
        dwi = np.lib.format.open_memmap(folder / "dwi.npy", mode="w+", dtype=np.float32,
                                        shape=(n, img.shape[2], img.shape[0], img.shape[1]))
        for i in range(n):  # one volume at a time: memory stays at one volume
            dwi[i] = norm.forward(np.asarray(img.dataobj[..., i], dtype=np.float32)).transpose(2, 0, 1)
        dwi.flush()
        del dwi
        np.save(folder / "b0.npy", norm.forward(b0).transpose(2, 0, 1).astype(np.float32))
        np.save(folder / "mask.npy", mask.transpose(2, 0, 1).astype(np.uint8))
        np.save(folder / "scale.npy", np.array([norm.scale]))
        done.touch()
    table = read_fsl(run.bval, run.bvec)
    return RunCache(
        dwi=np.load(folder / "dwi.npy", mmap_mode="r"),
        b0=np.load(folder / "b0.npy", mmap_mode="r"),
        mask=np.load(folder / "mask.npy", mmap_mode="r"),
        bvals=table.bvals,
        bvecs=table.bvecs,
        scale=float(np.load(folder / "scale.npy")[0]),
        folder=folder,
    )


class SliceDataset(torch.utils.data.Dataset):
    """All (run, diffusion-weighted volume, slice) samples of a set of prepared runs.

    ``adc_atlas`` is ``(X, Y, Z, S)`` in mm^2/s for the sorted ``shells``; ``tracts`` optional
    ``(X, Y, Z, K)`` probabilities on the template grid (both as their NIfTI files store them). Slices whose brain mask covers less than
    ``min_brain_fraction`` of the largest brain slice are left out. ``context``: the model's context kind;
    ``context_shells``: the acquired shells (s/mm^2) that may serve as context (None = every acquired shell).
    """

    def __init__(
        self,
        runs: list[PreparedRun],
        grid: SliceGrid,
        cache_dir: Path,
        adc_atlas: np.ndarray,
        shells: np.ndarray,
        tracts: np.ndarray | None = None,
        b0_threshold: float = B0_THRESHOLD,
        min_brain_fraction: float = 0.1,
        context: str = "none",
        context_shells: Sequence[float] | None = None,
    ):
        from ..model.schedule import interpolate_adc
        from .context import run_context_maps

        self.grid = grid
        self.caches = [cache_run(run, cache_dir) for run in runs]
        self.shells = np.asarray(shells, dtype=np.float64)
        self.adc_atlas = np.moveaxis(np.asarray(adc_atlas, dtype=np.float32), -1, 0)  # (S, X, Y, Z)
        self.tracts = None if tracts is None else grid.pad(np.asarray(tracts, dtype=np.float32).transpose(3, 2, 0, 1))
        self._adc_cache: dict[float, np.ndarray] = {}
        self._interpolate = interpolate_adc
        self.contexts = None if context == "none" else [
            list(run_context_maps(run, cache.folder, context, cache.scale, context_shells).items())
            for run, cache in zip(runs, self.caches)
        ]
        index = []
        for r, cache in enumerate(self.caches):
            if cache.dwi.shape[1:] != (grid.shape[2], grid.shape[0], grid.shape[1]):
                raise ValueError(f"{runs[r].dwi}: grid {cache.dwi.shape[1:]} is not the model grid {grid.shape}")
            area = np.asarray(cache.mask).reshape(cache.mask.shape[0], -1).sum(axis=1)
            slices = np.flatnonzero(area >= min_brain_fraction * max(area.max(), 1))
            volumes = np.flatnonzero(cache.bvals > b0_threshold)
            if self.contexts is None:
                vv, zz = np.meshgrid(volumes, slices, indexing="ij")
                index.append(np.stack([np.full(vv.size, r), vv.ravel(), zz.ravel()], axis=1))
            else:  # (run, volume, slice, context shell)
                vv, zz, cc = np.meshgrid(volumes, slices, np.arange(len(self.contexts[r])), indexing="ij")
                index.append(np.stack([np.full(vv.size, r), vv.ravel(), zz.ravel(), cc.ravel()], axis=1))
        width = 3 if self.contexts is None else 4
        self.index = np.concatenate(index) if index else np.zeros((0, width), int)
        LOGGER.info("%d samples from %d run(s) on grid %s -> %s", len(self.index), len(runs), grid.shape, grid.padded)

    def __len__(self) -> int:
        return len(self.index)

    def adc_volume(self, b: float) -> np.ndarray:
        """``(Z, H, W)`` ADC atlas for b-value ``b`` (interpolated between shells), padded."""
        key = float(round(b, 1))
        if key not in self._adc_cache:
            adc = np.asarray(self._interpolate(self.adc_atlas, self.shells, key), dtype=np.float32)
            self._adc_cache[key] = self.grid.pad(adc.transpose(2, 0, 1))
        return self._adc_cache[key]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        r, v, z = (int(x) for x in self.index[i][:3])
        cache = self.caches[r]
        b = float(cache.bvals[v])
        sample = {
            "target": torch.from_numpy(self.grid.pad(np.asarray(cache.dwi[v, z]), -1.0)[None]),
            "b0": torch.from_numpy(self.grid.pad(np.asarray(cache.b0[z]), -1.0)[None]),
            "mask": torch.from_numpy(self.grid.pad(np.asarray(cache.mask[z], dtype=np.float32))[None]),
            "adc": torch.from_numpy(self.adc_volume(b)[z][None].copy()),
            "bval": torch.tensor(b, dtype=torch.float32),
            "bvec": torch.from_numpy(cache.bvecs[v].astype(np.float32)),
            "slice_pos": torch.tensor(float(self.grid.position(z)), dtype=torch.float32),
        }
        if self.tracts is not None:
            sample["tracts"] = torch.from_numpy(self.tracts[:, z].copy())
        if self.contexts is not None:
            shell, maps = self.contexts[r][int(self.index[i][3])]
            sample["context"] = torch.from_numpy(self.grid.pad(np.asarray(maps[z])))
            sample["context_bval"] = torch.tensor(shell, dtype=torch.float32)
        return sample
