"""Head-motion correction of a DWI run: one rigid transform per volume onto the b0 frame (antspyx).

Each volume is registered to a target of its own contrast, because a diffusion-weighted volume and a b0
look too different at high b for a direct registration to be reliable:

* b0 volumes to the first b0 volume (sharp; the mean of b0 volumes taken at different head positions
  is a blurred double image that pulls every registration towards the middle);
* the diffusion-weighted volumes of one shell to the mean of that shell.

The first targets are means of volumes at different head positions, blurred. ``HmcConfig.refinements`` (1 by
default) rebuilds each target from the registered volumes, leaving the volume out, and registers again from
the first estimate at the pyramid's finest level only. A shell's mean lies where the head was on average
during that shell, not where the b0 frame lies: the anchor (``HmcConfig.anchor``) places it from the b0
volumes' own positions, interpolated in acquisition order over the shell's volumes (slow drift; with one b0,
the b0's position), and that map is composed with the volumes' own. Every volume thus gets one rigid map from
the b0 frame to itself (parameters: :mod:`.motion`); the mean of the corrected b0 volumes is the run's new b0
reference.

Why not register each shell's mean to the b0 mean (``anchor="registration"``, mutual information)? On the
real scans it is biased: on all five sub-toshiba acquisitions (differently tilted slice stacks, b = 1500)
and both sub-xa30 runs (b = 2500) it put the diffusion-weighted volumes 2.8-3.9 mm lower and ~2 mm further
back than the b0, in world coordinates, the same in every series, which no head does; the bright CSF rim of
the b0 has no counterpart at high b. Eroding the mask for that registration (2 or 4 voxels) made it worse
(3-6 degrees). Prepared at 4 mm, the median angle of the DTI principal directions between the five
toshiba acquisitions (the agreement tests/test_workflow_real.py checks; benchmarks/hmc_real_agreement.py),
median over pairs / worst pair: ``--hmc none`` 7.55 / 8.75 degrees; registration anchor 7.73 / 10.10; drift
anchor 7.54 / 8.50. The xa30 AP
and PA runs agree to 17.0 degrees without motion correction and to 12.5 with it (drift anchor; 10.5 with
the registration anchor, which shifts both runs alike). On the phantom, whose head drifts as a random walk
(a shell may follow the last b0 by 20 volumes), the drift anchor is the worse one with three shells (below).

Measured on 4 mm phantoms (seed 3, 2 b0 + 15 directions per shell, SNR 30) with ``--motion 3`` against the
true motion, 1 ITK thread on a shared 2-core machine (median over volumes of the translation error and of
the angle of the residual rotation; ``benchmarks/hmc_diagnostic.py``):

==========================================  ==================  ==========================  ============
setting                                     b = 1000: mm, deg   b = 1000/2000/3000: mm, deg  s per volume
==========================================  ==================  ==========================  ============
smoothing 1, 0 voxels (final level raw)     0.04, 0.41          0.08, 0.62                  0.9
smoothing 1, 1 voxels (the default's)       0.04, 0.27          0.07, 0.48                  0.9
smoothing 1.5, 1 / 2, 1.5 voxels            0.04-0.06, 0.31     0.07, 0.47                  0.9
smoothing 1, 0.5 voxels, refined once       0.03, 0.28          -                           1.7
Mattes sampling 1.0 instead of 0.5          0.06, 0.49          -                           1.7
normalised correlation / mean squares       0.08-0.09, 0.86-1.0 -                           0.5-1.1
shell means registered to the b0 mean       0.05, 0.26          0.06, 0.41                  0.8
==========================================  ==================  ==========================  ============

The rows above used the registration anchor and no refinement (clock-seeded single draws, see below); the
drift anchor with smoothing 1, 1 measured 0.04 mm, 0.34 degrees at b = 1000 and 0.89 mm, 0.75 degrees with
three shells.

Without refinement the b = 1000 figure depends on the metric's sampling seed: 0.40 / 0.21 / 0.25 degrees with
three seeds, 0.38 with the app's ``--seed 0`` (0.21-0.41 over the seeds tried; translation 0.04 mm
throughout). Averaging three registrations per volume with different seeds did not remove it (0.38 against
0.40, 3x the time): most of the error is not one registration's sampling noise but the blurred target's,
which all volumes share (the refinement below). (Until 2026-12-02 the app passed its seed to ANTs
unchanged, and ANTs reads 0 as "from the clock": the earlier figures in this docstring are single draws.)

On a still head (``--motion 0.01``) the unrefined median rotation error is 0.08 degrees at b = 1000 (0.29 with
b = 3000 in the series) with single volumes up to 0.7-0.9 degrees (smoothing 1, 0: at most 0.15 at b = 1000,
but 0.5 degrees median once the head moves); such a volume shows as ~1 mm of framewise displacement.
Refined once (the default), the still phantom of tests/test_workflow_motion.py shows a mean FD of 0.25 mm
and at most 0.48 mm.

Smoothing the finest level by one voxel takes the noise out of the metric; most of the remaining rotation
error is at b = 3000 (SNR ~ 3-9 in white matter) and in the shell -> b0 anchor. Framewise displacement on
real scans also holds the eddy-current shifts along the phase-encoding axis (sub-xa30: +-3 mm in y from
direction to direction, mean FD 1.6 mm), which a rigid model takes for motion. Per-shell tensor predictions
as targets (contrast matched per direction) were worse than the shell mean (rotation 1.0 degree): the
leave-one-out fit from 11 noisy volumes is noisier than the 12-volume mean (normalised cross-correlation with
the acquired volume 0.58 against 0.72 at b = 3000).

Fine grids: the registrations need no finer grid than about 4 mm. On a 2 mm phantom (b = 1000, 2 b0 + 15
directions, ``--motion 3``, sampling seeds 0 and 1, refined once) the native grid (shrink 2, 1) gave 0.11 /
0.08 degrees and 0.010 mm; shrink 4, 2 with the same sigmas 0.06 / 0.10 degrees and 0.009 mm in a seventh of
the time (24 s against about 180 s for 17 volumes, the latter measured beside another job); shrink 4, 2 with
the sigmas doubled as well 0.11 / 0.08 degrees and 0.015 mm. Hence ``HmcConfig.finest_mm``. The real scans
in ../shared/data are 2.7-3 mm and keep the native grid.

Refinement, measured 2026-12-02 over five sampling seeds (0-4) on the b = 1000 phantom above (median
rotation error per seed; mean over seeds; translation 0.03-0.04 mm throughout; seconds for 17 volumes, one
thread):

=====================================  ==============================  ======  =====
targets                                rotation, degrees, seeds 0-4    mean    s
=====================================  ==============================  ======  =====
not refined (the default until then)   0.38 0.27 0.27 0.32 0.27        0.304   12.1
refined once, whole pyramid again      0.21 0.30 0.24 0.25 0.19        0.240   28.1
refined twice, whole pyramid again     0.21 0.21 0.21 0.28 0.19        0.221   43.5
refined once, finest level (default)   0.24 0.24 0.21 0.26 0.28        0.245   20.1
refined twice, finest level            0.20 0.23 0.18 0.23 0.26        0.221   28.8
twice the iterations, not refined      0.39 0.28 0.27 0.32 0.27        0.307   12.4
=====================================  ==============================  ======  =====

With three shells the anchor dominates and refinement does not change it (seeds 0-2: 0.75 0.86 0.88
degrees, 0.91 mm not refined; 0.82 0.80 0.83 degrees, 0.91 mm refined once): the b = 3000 shell follows the
last b0 by 7-22 volumes, and the phantom's head drifts on meanwhile.

The metric's mask, measured 2026-12-03 (refined once; seeds 0-4 at b = 1000, 0-2 with three shells; seconds
per run, one thread, partly beside another job; sub-xa30 dir-AP, 3 mm, 21 volumes):

=====================================  ==============================  ======  ===========  =====  ======
mask on the target                     rotation, degrees, b = 1000     mean    3 shells     s      xa30 s
=====================================  ==============================  ======  ===========  =====  ======
brain mask dilated by 2 voxels (old)   0.24 0.24 0.21 0.26 0.28        0.245   0.82, 0.91   19.7   75.7
dilated by 1 voxel                     0.30 0.20 0.18 0.31 0.22        0.243   -            17.1   62.1
brain mask (the default)               0.21 0.16 0.17 0.22 0.15        0.183   0.78, 0.87   14.8   53.0
=====================================  ==============================  ======  ===========  =====  ======

(three shells: median degrees, mm.) The dilated rim is mostly background noise: the optimiser's metric is
noisier there and meets ANTs' convergence test later (63 against 40 iterations for one sub-xa30 volume, 1.9
against 0.7 s). On sub-xa30 the two masks' estimates differ by at most 0.30 mm and 0.19 degrees.
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
    mask need not cover where the head moved to); ``anchor``: where each
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
    anchor: str = "b0-drift"
    finest_mm: float = 4.0

    def pyramid(self, voxel_mm: float) -> tuple[tuple[int, ...], tuple[float, ...]]:
        """Shrink factors and smoothing sigmas (native voxels) for a grid of ``voxel_mm`` mm voxels (the
        sigmas stay in native voxels: scaled with the shrink factors they lost accuracy on a 2 mm phantom)."""
        scale = max(1, int(np.floor(self.finest_mm / voxel_mm + 1e-6))) if self.finest_mm > 0 else 1
        return tuple(f * scale for f in self.shrink_factors), tuple(float(s) for s in self.smoothing_sigmas)

    def __post_init__(self) -> None:
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
    return (f"one rigid antspyx registration per volume ({metric}, {grid}): b0 volumes to the first b0, "
            f"diffusion-weighted volumes to their shell's mean (rebuilt from the registered volumes "
            f"{config.refinements} time(s), each volume then registered again to the mean of the others), each "
            f"shell's mean {anchor}; the reference is the mean of the corrected b0 volumes")


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
                 start: np.ndarray | None = None) -> np.ndarray:
        """``start``: a world map to begin from; the registration then runs the pyramid's finest level only
        (the map is already within a voxel or so), else the whole pyramid from the identity."""
        ants, c = self.ants, self.config
        levels = slice(-1, None) if start is not None else slice(None)
        initial = str(_write_world(ants, start, self.work_dir / f"{name}_start.mat")) if start is not None \
            else "Identity"
        saved = ants.config._random_seed  # antspyx passes --random-seed only from its global setting
        ants.config._random_seed = ants_seed(self.seed)
        try:
            # ANTs folds an initial linear transform into the one it writes: the result is the whole map
            result = ants.registration(
                fixed, moving, type_of_transform="Rigid", initial_transform=initial, mask=self.mask,
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
    from scipy.ndimage import binary_dilation

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
    mask = np.asarray(load_image(mask_path, ndim=3, what="brain mask").dataobj) > 0
    mask = binary_dilation(mask, iterations=config.mask_dilation) if config.mask_dilation else mask
    worlds = [np.eye(4) for _ in range(bvals.size)]
    with ants_session(work_dir, threads) as ants:
        volumes = ants.ndimage_to_list(ants.image_read(str(dwi_path)).clone("float"))
        reference = volumes[b0_index[0]]
        voxel_mm = float(np.prod(img.header.get_zooms()[:3]) ** (1 / 3))
        register = _Registrar(ants, config, seed, scratch, reference.new_image_like(mask.astype(np.float32)),
                              voxel_mm)
        tmp = scratch / "resample.mat"

        def corrected(index):
            return np.stack([_resample(ants, reference, volumes[i], worlds[i], tmp).ravel() for i in index])

        def image(data):
            return reference.new_image_like(data.reshape(reference.shape).astype(np.float32))

        def align(index, target, label):
            """Register the volumes of ``index`` to ``target``, then to the mean of the others, ``refinements``
            times (a lone volume has no others); returns the final mean (``target`` frame)."""
            for rnd in range(config.refinements + 1 if index.size > 1 else 1):
                for i in index:
                    worlds[i] = register(target, volumes[i], f"vol-{i:04d}") if rnd == 0 else \
                        register(image(loo[i]), volumes[i], f"vol-{i:04d}", start=worlds[i])
                data = corrected(index)
                total = data.sum(axis=0)
                loo = {i: (total - data[k]) / (index.size - 1) for k, i in enumerate(index)} if index.size > 1 else {}
            log.info("%s: %d %s volume(s) registered", Path(dwi_path).name, index.size, label)
            return total / index.size

        b0_mean = align(b0_index, reference, "b0")
        for shell, index in zip(shell_values, shells):
            shell_mean = align(index, image(corrected(index).mean(axis=0)), f"b={shell:g}")
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
