"""Head-motion correction of a DWI run: one rigid transform per volume onto the b0 frame (antspyx).

Each volume is registered to a target of its own contrast, because a diffusion-weighted volume and a b0
look too different at high b for a direct registration to be reliable:

* b0 volumes to the first b0 volume (sharp; the mean of b0 volumes taken at different head positions
  is a blurred double image that pulls every registration towards the middle);
* the diffusion-weighted volumes of one shell to the mean of that shell; once roughly in place, their
  metric is limited to a band about the brain's outline (``HmcConfig.edge_band``; inside the brain their
  contrast depends on the gradient direction).

A run's only b0 is the reference frame as it is (registered to itself it would only pick up the metric's
sampling noise, and the b0 reference, resampled, would change the registration to the template).

The first targets are means of volumes at different head positions, blurred. ``HmcConfig.refinements`` (1 by
default) rebuilds each target from the registered volumes, leaving the volume out, and registers again from
the first estimate at the pyramid's finest level only. A shell's mean lies where the head was on average
during that shell, not where the b0 frame lies: the anchor (``HmcConfig.anchor``) places it from the b0
volumes' own positions, interpolated in acquisition order over the shell's volumes (slow drift; with one b0,
the b0's position), and that map is composed with the volumes' own. Every volume thus gets one rigid map from
the b0 frame to itself (parameters: :mod:`.motion`); the mean of the corrected b0 volumes is the run's new b0
reference.

The anchor, the pyramid, the metric's mask and region, and the refinement were each chosen on measurements
(phantoms with known motion, and real scans: the still sub-toshiba must agree as well with correction as
without); they are in docs/motion_correction.md.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .ants_runtime import AntsError, ants_seed, ants_session
from .b0 import load_series
from .gradients import B0_THRESHOLD, unique_shells
from .motion import ants_to_world, drift_anchor, framewise_displacement, grid_centre, rigid_parameters, world_to_ants
from .nifti import load_image, save_image

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HmcConfig:
    """Settings of the per-volume rigid registrations (``ants.registration(type_of_transform="Rigid")``).

    ``shrink_factors``/``smoothing_sigmas`` (voxels)/``iterations``: the pyramid, coarse to fine (motion is a
    few mm, so no coarse levels are needed), for grids coarser than ``finest_mm`` / 2; on a grid that fine or
    finer the shrink factors are multiplied by ``floor(finest_mm / voxel)`` (:meth:`pyramid`), so that a 2 mm
    series is registered on a 4 mm grid (0: always on the native grid); ``sampling``: fraction of voxels in
    the Mattes mutual information (``bins`` bins); ``refinements``: how many times each target is rebuilt from
    the registered volumes and registered to again; ``mask_dilation``: voxels added around the brain mask that
    limits the metric on the target (0: the mask as it is; the target lies in the reference frame, so the
    mask need not cover where the head moved to); ``edge_band``: ``(outside, inside)`` voxels about the
    mask's boundary that the diffusion-weighted volumes' metric keeps in the refinements (their interior
    contrast depends on the gradient direction; None: the same mask as the b0 volumes); ``band_first_pass``:
    the band for their first registration as well (False: the brain mask there, for its capture range: a thin
    band on its own can lose its way from far off); ``anchor``: where each
    shell's mean lies relative to the b0 frame: ``"b0-drift"`` = the head positions of the b0 volumes
    interpolated linearly in acquisition order to the shell's volumes and averaged (one b0: the b0's own
    position; no cross-contrast registration), ``"registration"`` = the shell mean registered to the b0 mean
    (mutual information).
    """

    shrink_factors: tuple[int, ...] = (2, 1)
    smoothing_sigmas: tuple[float, ...] = (1.0, 1.0)
    iterations: tuple[int, ...] = (100, 50)
    sampling: float = 0.5
    bins: int = 32
    metric: str = "mattes"
    refinements: int = 1
    mask_dilation: int = 0
    edge_band: tuple[int, int] | None = (1, 1)
    band_first_pass: bool = False
    anchor: str = "b0-drift"
    finest_mm: float = 4.0

    def pyramid(self, voxel_mm: float) -> tuple[tuple[int, ...], tuple[float, ...]]:
        """Shrink factors and smoothing sigmas (native voxels) for a grid of ``voxel_mm`` mm voxels (the
        sigmas stay in native voxels: scaled with the shrink factors they lost accuracy on a 2 mm phantom)."""
        scale = max(1, int(np.floor(self.finest_mm / voxel_mm + 1e-6))) if self.finest_mm > 0 else 1
        return tuple(f * scale for f in self.shrink_factors), tuple(float(s) for s in self.smoothing_sigmas)

    def __post_init__(self) -> None:
        if self.edge_band is not None and (len(self.edge_band) != 2 or min(self.edge_band) < 0
                                           or sum(self.edge_band) == 0):
            raise ValueError(f"edge_band must be (outside, inside) voxels, not both 0, got {self.edge_band!r}")
        if self.anchor not in ("b0-drift", "registration"):
            raise ValueError(f"anchor must be 'b0-drift' or 'registration', got {self.anchor!r}")


DEFAULT_HMC = HmcConfig()


def describe(config: HmcConfig) -> str:
    """The method in one sentence, for the confounds sidecar."""
    anchor = ("placed at the b0 volumes' positions interpolated in acquisition order"
              if config.anchor == "b0-drift" else "registered to the b0 mean")
    metric = "Mattes mutual information" if config.metric == "mattes" else f"metric {config.metric}"
    grid = f"shrink factors {list(config.shrink_factors)}"
    if config.finest_mm > 0:
        grid += (f", multiplied on grids of {config.finest_mm / 2:g} mm or finer so that the finest level has "
                 f"about {config.finest_mm:g} mm voxels")
    region = ""
    if config.edge_band is not None:
        region = (f" (the metric on the {config.edge_band[0]} voxel(s) outside and {config.edge_band[1]} inside the "
                  f"brain mask's boundary{'' if config.band_first_pass else ' in the refinements'})")
    return (f"one rigid antspyx registration per volume ({metric}, {grid}): b0 volumes to the first b0 (a lone b0 "
            f"is the reference as it is), diffusion-weighted volumes to their shell's mean, rebuilt from the "
            f"registered volumes {config.refinements} time(s), each volume then registered again to the mean of "
            f"the others{region}; each shell's mean {anchor}; the reference is the mean of the corrected b0 volumes")


def metric_masks(mask: np.ndarray, config: HmcConfig) -> tuple[np.ndarray, np.ndarray]:
    """``(brain, band)``: the metric's masks (bool, the shape of ``mask``, a brain mask on the DWI grid) for
    the b0 volumes and first passes (``mask`` dilated by ``config.mask_dilation``), and for the refinements of
    the diffusion-weighted volumes (the voxels within ``config.edge_band`` of its boundary; ``brain`` if None)."""
    from scipy.ndimage import binary_dilation, binary_erosion

    brain = binary_dilation(mask, iterations=config.mask_dilation) if config.mask_dilation else mask
    if config.edge_band is None:
        return brain, brain
    outside, inside = config.edge_band
    band = binary_dilation(mask, iterations=outside) if outside else mask
    return brain, band & ~(binary_erosion(mask, iterations=inside) if inside else mask)


@dataclass(frozen=True)
class MotionEstimate:
    """What :func:`estimate_motion` found.

    ``transforms``: one ANTs ``.mat`` per volume mapping b0-reference points to that volume's points
    (what ``ants.apply_transforms(reference, volume, [path])`` needs); ``parameters`` ``(N, 6)`` and
    ``fd`` ``(N,)`` as in :mod:`.motion`; ``b0_reference``: the mean of the corrected b0 volumes.
    """

    transforms: tuple[Path, ...]
    parameters: np.ndarray
    fd: np.ndarray
    b0_reference: Path


def _world(ants, path: Path) -> np.ndarray:
    """(4, 4) RAS+ map of an ANTs linear transform file (reference points -> volume points)."""
    tx = ants.read_transform(str(path))
    params = np.asarray(tx.parameters, dtype=np.float64)
    matrix, translation = params[:9].reshape(3, 3), params[9:12]
    centre = np.asarray(tx.fixed_parameters, dtype=np.float64)
    return ants_to_world(matrix, translation + centre - matrix @ centre)


def _write_world(ants, world: np.ndarray, path: Path) -> Path:
    matrix, offset = world_to_ants(world)
    tx = ants.create_ants_transform(transform_type="AffineTransform", precision="double", dimension=3,
                                    matrix=matrix, translation=offset, center=[0.0, 0.0, 0.0])
    ants.write_transform(tx, str(path))
    return path


class _Registrar:
    """Rigid registrations of in-memory antspyx images; returns the world map (reference -> volume)."""

    def __init__(self, ants, config: HmcConfig, seed: int, work_dir: Path, mask, voxel_mm: float):
        self.ants, self.config, self.seed, self.work_dir, self.mask = ants, config, seed, work_dir, mask
        self.shrink, self.sigmas = config.pyramid(voxel_mm)

    def __call__(self, fixed, moving, name: str, metric: str | None = None,
                 start: np.ndarray | None = None, mask=None) -> np.ndarray:
        """``start``: a world map to begin from; the registration then runs the pyramid's finest level only
        (the map is already within a voxel or so), else the whole pyramid from the identity. ``mask``: the
        metric's mask on ``fixed`` instead of the registrar's."""
        ants, c = self.ants, self.config
        levels = slice(-1, None) if start is not None else slice(None)
        initial = str(_write_world(ants, start, self.work_dir / f"{name}_start.mat")) if start is not None \
            else "Identity"
        saved = ants.config._random_seed  # antspyx passes --random-seed only from its global setting
        ants.config._random_seed = ants_seed(self.seed)
        try:
            # ANTs folds an initial linear transform into the one it writes: the result is the whole map
            result = ants.registration(
                fixed, moving, type_of_transform="Rigid", initial_transform=initial,
                mask=self.mask if mask is None else mask,
                aff_metric=metric or c.metric, aff_sampling=c.bins, aff_random_sampling_rate=c.sampling,
                aff_iterations=tuple(c.iterations[levels]), aff_shrink_factors=self.shrink[levels],
                aff_smoothing_sigmas=self.sigmas[levels], outprefix=str(self.work_dir / f"{name}_"))
        except RuntimeError as exc:
            raise AntsError(f"rigid registration of volume {name} failed: {exc}") from None
        finally:
            ants.config._random_seed = saved
            if start is not None:
                Path(initial).unlink(missing_ok=True)
        path = Path(result["fwdtransforms"][0])
        world = _world(ants, path)
        path.unlink(missing_ok=True)
        return world


def _resample(ants, reference, volume, world: np.ndarray, path: Path) -> np.ndarray:
    """``volume`` on the reference grid through its world map (reference -> volume), as an array."""
    _write_world(ants, world, path)
    data = ants.apply_transforms(reference, volume, [str(path)], interpolator="linear").numpy()
    path.unlink()
    return data


def estimate_motion(
    dwi_path: str | Path,
    bval_path: str | Path,
    mask_path: str | Path,
    work_dir: str | Path,
    threads: int = 1,
    seed: int = 0,
    b0_threshold: float = B0_THRESHOLD,
    config: HmcConfig = DEFAULT_HMC,
) -> MotionEstimate:
    """Register every volume of a DWI series rigidly to the frame of its first b0 volume (see the module
    docstring). ``mask_path``: a brain mask on the DWI grid (that of the b0 reference). Writes
    ``vol-XXXX_hmc.mat`` per volume and ``b0ref_hmc.nii.gz`` (the mean of the corrected b0 volumes) into
    ``work_dir``."""
    work_dir = Path(work_dir).absolute()
    scratch = work_dir / "registrations"
    scratch.mkdir(parents=True, exist_ok=True)
    img, bvals = load_series(dwi_path, bval_path)
    b0_index = np.flatnonzero(bvals <= b0_threshold)
    if b0_index.size == 0:
        raise AntsError(f"{dwi_path}: no b0 volume (b <= {b0_threshold:g}) to correct the motion against")
    shell_values = unique_shells(bvals[bvals > b0_threshold])
    nearest = np.abs(bvals[:, None] - shell_values[None, :]).argmin(axis=1) if shell_values.size else bvals * 0
    shells = [np.flatnonzero((nearest == k) & (bvals > b0_threshold)) for k in range(shell_values.size)]
    masks = metric_masks(np.asarray(load_image(mask_path, ndim=3, what="brain mask").dataobj) > 0, config)
    worlds = [np.eye(4) for _ in range(bvals.size)]
    with ants_session(work_dir, threads) as ants:
        volumes = ants.ndimage_to_list(ants.image_read(str(dwi_path)).clone("float"))
        reference = volumes[b0_index[0]]
        voxel_mm = float(np.prod(img.header.get_zooms()[:3]) ** (1 / 3))
        brain_mask, band_mask = (reference.new_image_like(m.astype(np.float32)) for m in masks)
        register = _Registrar(ants, config, seed, scratch, brain_mask, voxel_mm)
        tmp = scratch / "resample.mat"

        def corrected(index):
            return np.stack([_resample(ants, reference, volumes[i], worlds[i], tmp).ravel() for i in index])

        def image(data):
            return reference.new_image_like(data.reshape(reference.shape).astype(np.float32))

        def align(index, target, label, refine_mask=None):
            """Register the volumes of ``index`` to ``target``, then to the mean of the others, ``refinements``
            times (with the metric on ``refine_mask`` if given); returns the final mean (``target`` frame). A lone
            volume is its own target (a run's only b0, a shell of one direction) and keeps the identity:
            registered to itself it would only pick up the metric's sampling noise, and the b0 reference would
            be resampled for nothing."""
            if index.size == 1:
                return volumes[index[0]].numpy().ravel()
            for rnd in range(config.refinements + 1):
                for i in index:
                    worlds[i] = register(target, volumes[i], f"vol-{i:04d}",
                                         mask=refine_mask if config.band_first_pass else None) if rnd == 0 else \
                        register(image(loo[i]), volumes[i], f"vol-{i:04d}", start=worlds[i], mask=refine_mask)
                data = corrected(index)
                total = data.sum(axis=0)
                loo = {i: (total - data[k]) / (index.size - 1) for k, i in enumerate(index)}
            log.info("%s: %d %s volume(s) registered", Path(dwi_path).name, index.size, label)
            return total / index.size

        b0_mean = align(b0_index, reference, "b0")
        for shell, index in zip(shell_values, shells):
            shell_mean = align(index, image(corrected(index).mean(axis=0)), f"b={shell:g}", refine_mask=band_mask)
            # the shell's mean lies where the head was on average during the shell: bring it onto the b0s
            if config.anchor == "registration":
                anchor = register(image(b0_mean), image(shell_mean), f"anchor-b{shell:g}", metric="mattes")
            else:
                anchor = drift_anchor([worlds[i] for i in b0_index], b0_index, index, grid_centre(img.affine, img.shape))
            for i in index:
                worlds[i] = worlds[i] @ anchor
        transforms = tuple(_write_world(ants, worlds[i], work_dir / f"vol-{i:04d}_hmc.mat")
                           for i in range(bvals.size))
    b0_ref = save_image(b0_mean.reshape(img.shape[:3]), img.affine, work_dir / "b0ref_hmc.nii.gz", template=img)
    centre = grid_centre(img.affine, img.shape)
    params = np.array([rigid_parameters(w, centre) for w in worlds])
    return MotionEstimate(transforms, params, framewise_displacement(params), b0_ref)
