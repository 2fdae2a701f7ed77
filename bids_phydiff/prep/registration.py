"""Image registration with ANTs (antspyx): b0 -> T1w rigid, T1w -> template and b0 -> template nonlinear.

Conventions. ANTs works in LPS world coordinates; NIfTI files are read and written by ITK, which converts,
so the files here need no care. A registration of ``moving`` to ``fixed`` gives a
:class:`~.transforms.TransformChain` (ANTs order; see :mod:`.transforms`) that resamples the moving image
onto the fixed grid.

Stage pyramids are given in mm (``RegistrationConfig.linear_levels_mm``/``syn_levels_mm``) and turned into
shrink factors of the fixed image, so the same settings fit 1, 2 or 4 mm templates. Each registration runs
with exactly the requested ITK threads (in this process, or in a child process when this one's ITK already
uses another count; see :mod:`.ants_runtime`) and ``--random-seed``: with one thread the same seed gives the
same transform bit for bit; with more, results vary in the last digits from run to run.

The prepare stage, per subject: :func:`register_t1w_to_template` (once), :func:`t1w_brain`, then per DWI run
:func:`register_b0_to_t1w` and ``b0_to_t1w.chain.then(t1w_to_template.chain)``; without a T1w,
:func:`register_b0_to_template`. :func:`bids_phydiff.prep.resample.write_transforms` turns a chain into
the two ``.h5`` files.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np

from ..errors import InputDataError
from .ants_runtime import AntsError, ants_seed, run_registration
from .grid import same_grid
from .nifti import load_data, load_image, save_image, voxel_sizes
from .resample import resample_mask
from .template_files import TemplateError
from .templates import TemplateGrid
from .transforms import TransformChain

log = logging.getLogger(__name__)

Kind = Literal["rigid", "affine", "syn"]
KINDS = ("rigid", "affine", "syn")
Init = Literal["identity", "center_of_mass", "geometric_center"]
INITS = {"identity": None, "center_of_mass": 1, "geometric_center": 0}

RegistrationError = AntsError


@dataclass(frozen=True)
class RegistrationConfig:
    """Stages and their settings.

    ``linear_levels_mm`` / ``syn_levels_mm``: the voxel size (mm) each pyramid level works at, coarse to
    fine (shrink factor = level / fixed voxel size, at least 1; smoothing sigma = log2(shrink) voxels).
    Metric: Mattes mutual information with ``bins`` bins (``sampling`` fraction of voxels, regular grid
    with seeded jitter, for the linear stages; all voxels for SyN).
    """

    linear_levels_mm: tuple[float, ...] = (8.0, 4.0)
    linear_iterations: tuple[int, ...] = (500, 250)
    syn_levels_mm: tuple[float, ...] = (8.0, 4.0)
    syn_iterations: tuple[int, ...] = (40, 20)
    syn_step: float = 0.1
    syn_update_sigma: float = 3.0
    syn_total_sigma: float = 0.0
    linear_step: float = 0.1
    bins: int = 32
    sampling: float = 0.25
    convergence: float = 1e-6
    window: int = 10
    winsorize: tuple[float, float] = (0.005, 0.995)

    def __post_init__(self):
        if len(self.linear_levels_mm) != len(self.linear_iterations):
            raise ValueError("one iteration count per linear level is needed")
        if len(self.syn_levels_mm) != len(self.syn_iterations):
            raise ValueError("one iteration count per SyN level is needed")


RIGID_B0_T1W = RegistrationConfig()
"""b0 -> T1w. A last level at 2 mm was tried: slower (x4) and no more stable across seeds on sub-xa30."""


@dataclass(frozen=True)
class Registration:
    """The result of :func:`register`: what was registered to what, and the transforms (files in
    ``work_dir``)."""

    kind: str
    moving: Path
    fixed: Path
    chain: TransformChain
    seed: int = 0
    threads: int = 1


def _levels(levels_mm, iterations, fixed_spacing: float) -> tuple[str, str, str]:
    shrink = [max(1, int(round(level / fixed_spacing))) for level in levels_mm]
    sigmas = [math.log2(s) for s in shrink]
    return (
        "x".join(str(int(i)) for i in iterations),
        "x".join(str(s) for s in shrink),
        "x".join(f"{s:g}" for s in sigmas) + "vox",
    )


def build_arguments(
    moving: Path,
    fixed: Path,
    kind: Kind,
    prefix: Path,
    seed: int,
    config: RegistrationConfig,
    fixed_mask: Path | None = None,
    moving_mask: Path | None = None,
    init: Init = "center_of_mass",
) -> list[str]:
    """The ``antsRegistration`` command line (without the program name) for one registration."""
    if kind not in KINDS:
        raise ValueError(f"registration kind must be one of {KINDS}, got {kind!r}")
    if init not in INITS:
        raise ValueError(f"initialisation must be one of {tuple(INITS)}, got {init!r}")
    spacing = float(np.min(voxel_sizes(nib.load(str(fixed)).affine)))
    fx, mv = str(fixed), str(moving)
    linear_metric = f"MI[{fx},{mv},1,{config.bins},Regular,{config.sampling:g}]"
    its, shrink, sigmas = _levels(config.linear_levels_mm, config.linear_iterations, spacing)
    conv = f"[{its},{config.convergence:g},{config.window}]"
    args = [
        "--dimensionality", "3",
        "--float", "1",
        "--collapse-output-transforms", "1",
        "--output", f"[{prefix}]",
        "--interpolation", "Linear",
        "--use-histogram-matching", "0",
        "--winsorize-image-intensities", f"[{config.winsorize[0]:g},{config.winsorize[1]:g}]",
    ]
    if INITS[init] is not None:
        args += ["--initial-moving-transform", f"[{fx},{mv},{INITS[init]}]"]
    args += [
        "--transform", f"Rigid[{config.linear_step:g}]",
        "--metric", linear_metric, "--convergence", conv, "--shrink-factors", shrink, "--smoothing-sigmas", sigmas,
    ]
    if kind in ("affine", "syn"):
        args += [
            "--transform", f"Affine[{config.linear_step:g}]",
            "--metric", linear_metric, "--convergence", conv, "--shrink-factors", shrink,
            "--smoothing-sigmas", sigmas,
        ]
    if kind == "syn":
        its, shrink, sigmas = _levels(config.syn_levels_mm, config.syn_iterations, spacing)
        args += [
            "--transform", f"SyN[{config.syn_step:g},{config.syn_update_sigma:g},{config.syn_total_sigma:g}]",
            "--metric", f"MI[{fx},{mv},1,{config.bins}]",
            "--convergence", f"[{its},{config.convergence:g},{config.window}]",
            "--shrink-factors", shrink, "--smoothing-sigmas", sigmas,
        ]
    if fixed_mask is not None or moving_mask is not None:
        args += ["--masks", f"[{fixed_mask or 'NULL'},{moving_mask or 'NULL'}]"]
    args += ["--random-seed", str(ants_seed(seed))]
    return args


def register(
    moving: str | Path,
    fixed: str | Path,
    kind: Kind,
    work_dir: str | Path,
    threads: int = 1,
    seed: int = 0,
    moving_mask: str | Path | None = None,
    fixed_mask: str | Path | None = None,
    config: RegistrationConfig | None = None,
    name: str = "reg",
    init: Init = "center_of_mass",
) -> Registration:
    """Register ``moving`` to ``fixed`` (NIfTI paths): ``"rigid"``, ``"affine"`` (rigid then affine) or
    ``"syn"`` (rigid, affine, then SyN), mutual information throughout.

    ``init``: ``"identity"`` starts from the images' world (scanner) coordinates, right for two images of
    one session; ``"center_of_mass"`` (default) first overlays the intensity centres of mass, right when the
    world coordinates are unrelated (subject -> template); ``"geometric_center"`` the image centres.

    The transforms are written into ``work_dir`` as ``<name>_0GenericAffine.mat`` (and for SyN
    ``<name>_1Warp.nii.gz``, ``<name>_1InverseWarp.nii.gz``) and returned as a :class:`TransformChain`
    moving -> fixed. Masks (optional) limit the metric to the voxels inside them.
    """
    moving, fixed = Path(moving).absolute(), Path(fixed).absolute()
    moving_mask = None if moving_mask is None else Path(moving_mask).absolute()
    fixed_mask = None if fixed_mask is None else Path(fixed_mask).absolute()
    for path, what in ((moving, "moving image"), (fixed, "fixed image"), (moving_mask, "moving mask"),
                       (fixed_mask, "fixed mask")):
        if path is not None:
            load_image(path, ndim=3, what=what)
    config = config or RegistrationConfig()
    work_dir = Path(work_dir).absolute()
    work_dir.mkdir(parents=True, exist_ok=True)
    prefix = work_dir / f"{name}_"
    for old in work_dir.glob(f"{name}_[0-9]*"):
        old.unlink()
    args = build_arguments(moving, fixed, kind, prefix, seed, config, fixed_mask, moving_mask, init)
    log.info("registering %s -> %s (%s, %d thread(s), seed %d)", moving.name, fixed.name, kind, threads, seed)
    run_registration(args, work_dir, threads, what=f"{kind} registration of {moving} to {fixed}")
    affine = Path(f"{prefix}0GenericAffine.mat")
    if not affine.is_file():
        raise AntsError(f"{kind} registration of {moving} to {fixed} wrote no {affine.name} in {work_dir}")
    if kind == "syn":
        warp, inverse_warp = Path(f"{prefix}1Warp.nii.gz"), Path(f"{prefix}1InverseWarp.nii.gz")
        if not (warp.is_file() and inverse_warp.is_file()):
            raise AntsError(f"SyN registration of {moving} to {fixed} wrote no warp fields in {work_dir}")
        chain = TransformChain((warp, affine), (False, False), (affine, inverse_warp), (True, False))
    else:
        chain = TransformChain((affine,), (False,), (affine,), (True,))
    return Registration(kind, moving, fixed, chain, seed, threads)


# ----------------------------------------------------------------------------------------------------------
# the registrations of the prepare stage


def masked_image(image_path: str | Path, mask_path: str | Path, out_path: str | Path) -> Path:
    """Write ``image * mask`` (float32) to ``out_path``; the two must share a grid."""
    img = load_image(image_path, ndim=3)
    mask_img = load_image(mask_path, ndim=3, what="mask")
    if not same_grid(img.shape, img.affine, mask_img.shape, mask_img.affine):
        raise InputDataError(f"{mask_path}: not on the grid of {image_path}")
    data = load_data(img, image_path) * (np.asarray(mask_img.dataobj) > 0)
    return save_image(data, img.affine, out_path, dtype=np.float32)


def register_b0_to_t1w(
    b0: str | Path,
    b0_mask: str | Path,
    t1w_brain: str | Path,
    work_dir: str | Path,
    threads: int = 1,
    seed: int = 0,
    config: RegistrationConfig = RIGID_B0_T1W,
    init: Init = "identity",
) -> Registration:
    """Rigid registration of the brain-masked b0 reference to the subject's brain-extracted T1w (mutual
    information; see :func:`t1w_brain` for the T1w), starting from the scanner coordinates
    (``init="identity"``; use ``"center_of_mass"`` for a T1w from another session).

    Brain to brain is what makes this stable: on sub-xa30, b0 -> whole-head T1w (with or without a mask)
    jumped by up to 2 cm between seeds, brain to brain stays within about 1 mm and 3 degrees.
    """
    work_dir = Path(work_dir)
    moving = masked_image(b0, b0_mask, work_dir / "b0_brain.nii.gz")
    return register(moving, t1w_brain, "rigid", work_dir, threads, seed, config=config, name="b0_to_t1w",
                    init=init)


def t1w_brain(
    t1w: str | Path,
    t1w_to_template: Registration,
    grid: TemplateGrid,
    work_dir: str | Path,
    threads: int = 1,
    out_brain: str | Path | None = None,
    out_mask: str | Path | None = None,
) -> tuple[Path, Path]:
    """Brain-extract the T1w with the template's brain mask brought back through the T1w -> template
    registration; returns (T1w * mask, mask) written to ``out_brain``/``out_mask`` (default: in ``work_dir``)."""
    work_dir = Path(work_dir)
    out_mask = Path(out_mask or work_dir / "t1w_brain_mask.nii.gz")
    out_brain = Path(out_brain or work_dir / "t1w_brain.nii.gz")
    chain = t1w_to_template.chain
    resample_mask(grid.mask, chain.inverse, t1w, out_mask, work_dir, threads, invert=chain.inverse_invert)
    return masked_image(t1w, out_mask, out_brain), out_mask


def register_t1w_to_template(
    t1w: str | Path,
    grid: TemplateGrid,
    work_dir: str | Path,
    threads: int = 1,
    seed: int = 0,
    config: RegistrationConfig | None = None,
    t1w_mask: str | Path | None = None,
) -> Registration:
    """Affine + SyN registration of the subject's T1w to the template's T1w (mutual information).

    With a whole-head template T1w (MNI152NLin6Asym, MNI305) the whole-head subject T1w goes in as it is.
    A template with only a brain-extracted T1w needs the subject's brain too: pass ``t1w_mask`` (a brain
    mask on the T1w grid). Without it :class:`TemplateError` is raised rather than returning a poor result
    (on sub-xa30, head -> brain-only MNI152NLin2009cAsym, masked or not, did not converge); the b0 ->
    template path (:func:`register_b0_to_template`) needs no T1w mask.
    """
    work_dir = Path(work_dir)
    moving = Path(t1w)
    if t1w_mask is not None:
        moving = masked_image(t1w, t1w_mask, work_dir / "t1w_masked.nii.gz")
        fixed = grid.brain_t1w if grid.brain_t1w is not None else masked_image(
            grid.t1w, grid.mask, work_dir / "template_brain.nii.gz")
    elif not grid.has_head_t1w:
        raise TemplateError(
            f"template {grid.name} has no whole-head T1w in TEMPLATEFLOW_HOME={grid.home} (only {grid.t1w.name}): "
            f"registering the whole-head {t1w} to it needs a brain mask of the T1w (t1w_mask), or register the "
            f"b0 to the template directly"
        )
    else:
        fixed = grid.t1w
    return register(moving, fixed, "syn", work_dir, threads, seed, config=config, name="t1w_to_template")


def register_b0_to_template(
    b0: str | Path,
    b0_mask: str | Path,
    grid: TemplateGrid,
    work_dir: str | Path,
    threads: int = 1,
    seed: int = 0,
    config: RegistrationConfig | None = None,
) -> Registration:
    """Affine + SyN registration of the brain-masked b0 reference straight to the template (no T1w).

    The target is the template's b0-like image when it has one, else its brain-extracted T1w (the T1w
    times the brain mask when no brain T1w file exists); mutual information copes with the contrast.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    moving = masked_image(b0, b0_mask, work_dir / "b0_brain.nii.gz")
    if grid.b0 is not None:  # brain to brain, as the moving side is
        fixed = masked_image(grid.b0, grid.mask, work_dir / "template_b0_brain.nii.gz")
    elif grid.brain_t1w is not None:
        fixed = grid.brain_t1w
    else:
        fixed = masked_image(grid.t1w, grid.mask, work_dir / "template_brain.nii.gz")
    return register(moving, fixed, "syn", work_dir, threads, seed, config=config, name="b0_to_template")
