"""Diffusion gradient tables: read, write, check, generate and rotate.

Conventions used everywhere in bids_phydiff:

* b-values in s/mm^2, shape ``(N,)``.
* b-vectors shape ``(N, 3)``, unit length (zero rows allowed for b0 volumes), in the FSL
  convention: components along the voxel axes of the image they sit beside, with the first
  component negated when the voxel-to-world matrix has a positive determinant.
* On disk: FSL text files, ``.bval`` one row of N numbers, ``.bvec`` three rows of N numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..errors import InputDataError

B0_THRESHOLD = 50.0
"""Volumes with b <= this (s/mm^2) count as b0."""

UNIT_TOLERANCE = 0.05
"""How far from 1 the norm of a diffusion-weighted b-vector may be before it is rejected."""


class GradientError(InputDataError):
    """A gradient file that cannot be used; the message names the file."""


@dataclass(frozen=True)
class GradientTable:
    """b-values ``(N,)`` in s/mm^2 and b-vectors ``(N, 3)`` in FSL convention."""

    bvals: np.ndarray
    bvecs: np.ndarray

    def __post_init__(self):
        bvals = np.asarray(self.bvals, dtype=np.float64).reshape(-1)
        bvecs = np.asarray(self.bvecs, dtype=np.float64)
        if bvecs.ndim != 2 or bvecs.shape != (bvals.size, 3):
            raise GradientError(f"b-vectors of shape {bvecs.shape} do not match {bvals.size} b-values")
        object.__setattr__(self, "bvals", bvals)
        object.__setattr__(self, "bvecs", bvecs)

    def __len__(self) -> int:
        return self.bvals.size

    def b0_mask(self, threshold: float = B0_THRESHOLD) -> np.ndarray:
        """Boolean ``(N,)``: which volumes are b0."""
        return self.bvals <= threshold

    def shells(self, threshold: float = B0_THRESHOLD, tolerance: float = 100.0) -> np.ndarray:
        """Sorted nominal b-values of the diffusion-weighted shells (b0 excluded)."""
        return unique_shells(self.bvals[self.bvals > threshold], tolerance)

    def select(self, index) -> "GradientTable":
        return GradientTable(self.bvals[index], self.bvecs[index])


SHELL_TOLERANCE = 100.0
"""s/mm^2: b-values this close belong to one shell."""


def unique_shells(bvals: np.ndarray, tolerance: float = SHELL_TOLERANCE) -> np.ndarray:
    """Group b-values that lie within ``tolerance`` of each other; return one rounded value per group."""
    values = np.sort(np.asarray(bvals, dtype=np.float64).reshape(-1))
    if values.size == 0:
        return values
    groups = [[values[0]]]
    for v in values[1:]:
        if v - groups[-1][-1] <= tolerance:
            groups[-1].append(v)
        else:
            groups.append([v])
    return np.array([round(float(np.median(g)), -1) for g in groups])


def shell_index(bvals: np.ndarray, shells: np.ndarray, tolerance: float = 100.0) -> np.ndarray:
    """Index into ``shells`` of each b-value, -1 where none is within ``tolerance``."""
    bvals = np.asarray(bvals, dtype=np.float64).reshape(-1)
    shells = np.asarray(shells, dtype=np.float64).reshape(-1)
    if shells.size == 0:
        return np.full(bvals.shape, -1)
    dist = np.abs(bvals[:, None] - shells[None, :])
    idx = dist.argmin(axis=1)
    idx[dist[np.arange(bvals.size), idx] > tolerance] = -1
    return idx


def read_fsl(bval_path: str | Path, bvec_path: str | Path) -> GradientTable:
    """Read an FSL ``.bval``/``.bvec`` pair; raise :class:`GradientError` naming the file on problems."""
    bval_path, bvec_path = Path(bval_path), Path(bvec_path)
    bvals = read_bvals(bval_path)
    bvecs = _read_numbers(bvec_path)
    if bvecs.ndim == 1 and bvecs.size == 3:
        bvecs = bvecs.reshape(3, 1)
    if bvecs.ndim != 2 or 3 not in bvecs.shape:
        raise GradientError(f"{bvec_path}: expected 3 rows of b-vector components, found shape {bvecs.shape}")
    if bvecs.shape[0] != 3:  # tolerate the N x 3 layout some tools write
        bvecs = bvecs.T
    if bvecs.shape[1] != bvals.size:
        raise GradientError(
            f"{bvec_path}: {bvecs.shape[1]} b-vectors but {bval_path} has {bvals.size} b-values"
        )
    return GradientTable(bvals, bvecs.T)


def read_bvals(bval_path: str | Path) -> np.ndarray:
    """b-values ``(N,)`` (s/mm^2) from an FSL ``.bval`` file alone; :class:`GradientError` naming the file."""
    bval_path = Path(bval_path)
    bvals = _read_numbers(bval_path)
    if bvals.ndim != 1 and 1 not in bvals.shape:
        raise GradientError(f"{bval_path}: expected one row of b-values, found shape {bvals.shape}")
    bvals = bvals.reshape(-1)
    if np.any(bvals < 0):
        raise GradientError(f"{bval_path}: negative b-values")
    return bvals


def _read_numbers(path: Path) -> np.ndarray:
    if not path.is_file():
        raise GradientError(f"{path}: file not found")
    try:
        values = np.loadtxt(path, dtype=np.float64, ndmin=1)
    except ValueError as exc:
        raise GradientError(f"{path}: not a table of numbers ({exc})") from None
    if values.size == 0:
        raise GradientError(f"{path}: empty")
    if not np.all(np.isfinite(values)):
        raise GradientError(f"{path}: contains NaN or Inf")
    return values


def write_fsl(table: GradientTable, bval_path: str | Path, bvec_path: str | Path) -> None:
    """Write ``table`` as FSL text files (integers for b, 6 decimals for vectors)."""
    bvals = table.bvals
    fmt = "%d" if np.allclose(bvals, np.round(bvals)) else "%.6g"
    Path(bval_path).write_text(" ".join(fmt % b for b in bvals) + "\n")
    rows = [" ".join(f"{v:.6f}" for v in table.bvecs[:, i]) for i in range(3)]
    Path(bvec_path).write_text("\n".join(rows) + "\n")


def check_unit_length(table: GradientTable, source: str | Path, threshold: float = B0_THRESHOLD) -> None:
    """Raise :class:`GradientError` if a diffusion-weighted b-vector is not unit length."""
    dw = ~table.b0_mask(threshold)
    norms = np.linalg.norm(table.bvecs[dw], axis=1)
    bad = np.flatnonzero(np.abs(norms - 1.0) > UNIT_TOLERANCE)
    if bad.size:
        first = np.flatnonzero(dw)[bad[0]]
        raise GradientError(
            f"{source}: {bad.size} b-vector(s) of diffusion-weighted volumes are not unit length "
            f"(volume {first} has norm {norms[bad[0]]:.3f})"
        )


def uniform_directions(n: int, seed: int = 0, iterations: int = 500) -> np.ndarray:
    """``n`` unit vectors ``(n, 3)`` spread uniformly over the hemisphere (antipodally symmetric).

    Electrostatic repulsion between the points and their antipodes (dipy's ``disperse_charges``),
    started from seeded random points, so the result is deterministic for ``seed``.
    """
    from dipy.core.sphere import HemiSphere, disperse_charges

    if n < 1:
        raise ValueError("need at least one direction")
    rng = np.random.default_rng(seed)
    start = rng.normal(size=(n, 3))
    start /= np.linalg.norm(start, axis=1, keepdims=True)
    if n == 1:
        return start
    hemi, _ = disperse_charges(HemiSphere(xyz=start), iterations)
    vecs = np.asarray(hemi.vertices, dtype=np.float64)
    # canonical sign (z >= 0): antipodal directions are the same measurement
    vecs *= np.where(vecs[:, 2:3] < 0, -1.0, 1.0)
    return vecs


def multishell_scheme(
    shells: list[float] | tuple[float, ...],
    directions_per_shell: int | list[int],
    n_b0: int = 1,
    seed: int = 0,
) -> GradientTable:
    """A gradient table: ``n_b0`` b0 volumes then ``directions_per_shell`` uniform directions per shell.

    Each shell gets its own direction set (different seed), as acquisitions usually do.
    """
    counts = (
        [directions_per_shell] * len(shells)
        if isinstance(directions_per_shell, int)
        else list(directions_per_shell)
    )
    if len(counts) != len(shells):
        raise ValueError("one direction count per shell is needed")
    bvals = [np.zeros(n_b0)]
    bvecs = [np.zeros((n_b0, 3))]
    for i, (b, n) in enumerate(zip(shells, counts)):
        bvals.append(np.full(n, float(b)))
        bvecs.append(uniform_directions(n, seed=seed + 1000 * (i + 1)))
    return GradientTable(np.concatenate(bvals), np.concatenate(bvecs))


def _axes_frame(affine: np.ndarray) -> np.ndarray:
    """Rotation (3, 3) from FSL voxel-axis coordinates to world (RAS) coordinates."""
    linear = np.asarray(affine, dtype=np.float64)[:3, :3]
    u, _, vt = np.linalg.svd(linear)
    rotation = u @ vt  # nearest orthogonal matrix: drops voxel sizes and shears
    if np.linalg.det(linear) > 0:
        # FSL flips x for "neurological" (positive-determinant) images
        rotation = rotation @ np.diag([-1.0, 1.0, 1.0])
    return rotation


def fsl_to_world(bvecs: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """b-vectors ``(N, 3)`` in FSL convention of an image with ``affine`` -> world (RAS+) directions."""
    return np.asarray(bvecs, dtype=np.float64) @ _axes_frame(affine).T


def world_to_fsl(vectors: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World (RAS+) directions ``(N, 3)`` -> FSL-convention b-vectors for an image with ``affine``."""
    return np.asarray(vectors, dtype=np.float64) @ _axes_frame(affine)


def rotate_world(vectors: np.ndarray, linear: np.ndarray) -> np.ndarray:
    """Apply the rotation part of a world-space linear map ``(3, 3)`` to directions ``(N, 3)``.

    Scaling and shear are removed by polar decomposition; vectors stay unit length (zeros stay zero).
    """
    u, _, vt = np.linalg.svd(np.asarray(linear, dtype=np.float64))
    rotation = u @ vt
    return np.asarray(vectors, dtype=np.float64) @ rotation.T


def reorient_bvecs(
    bvecs: np.ndarray, source_affine: np.ndarray, target_affine: np.ndarray, world_linear: np.ndarray | None = None
) -> np.ndarray:
    """Move FSL b-vectors from the axes of one image to the axes of another.

    ``world_linear`` (3, 3) maps source world directions to target world directions (the linear
    part of the registration, source -> target); identity when the two share world space.
    """
    world = fsl_to_world(bvecs, source_affine)
    if world_linear is not None:
        world = rotate_world(world, world_linear)
    return world_to_fsl(world, target_affine)


# ----------------------------------------------------------------------------------------------------------
# b-vectors through an ANTs registration

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])

_LINEAR_TYPES = ("AffineTransform", "MatrixOffsetTransformBase")


def read_ants_linear(path: str | Path) -> np.ndarray:
    """The linear 3x3 part of an ANTs/ITK transform file, in ANTs terms: LPS, mapping points of the fixed
    space to the moving space.

    ``.mat`` (an ``AffineTransform``/``MatrixOffsetTransformBase``, as antsRegistration writes): its matrix.
    ``.h5`` (an ITK composite, as :func:`bids_phydiff.prep.resample.write_composite` writes): the product of
    its linear components in stored order (the order that acts on a point is the reverse; displacement
    fields are skipped, they have no global linear part). Raises :class:`GradientError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise GradientError(f"{path}: transform file not found")
    try:
        if path.suffix == ".mat":
            return _read_mat_linear(path)
        if path.suffix in (".h5", ".hdf5"):
            return _read_h5_linear(path)
    except GradientError:
        raise
    except Exception as exc:
        raise GradientError(f"{path}: cannot read the transform ({exc})") from None
    raise GradientError(f"{path}: not an ANTs .mat or ITK .h5 transform")


def _matrix(name: str, params: np.ndarray, path: Path) -> np.ndarray:
    if not name.startswith(_LINEAR_TYPES) or not name.endswith("_3_3"):
        raise GradientError(f"{path}: transform type {name} is not a 3D affine matrix")
    params = np.asarray(params, dtype=np.float64).reshape(-1)
    if params.size != 12:
        raise GradientError(f"{path}: {name} has {params.size} parameters, expected 12")
    return params[:9].reshape(3, 3)


def _read_mat_linear(path: Path) -> np.ndarray:
    from scipy.io import loadmat

    content = loadmat(str(path))
    names = [k for k in content if not k.startswith("__") and k != "fixed"]
    if len(names) != 1:
        raise GradientError(f"{path}: expected one transform, found {names}")
    return _matrix(names[0], content[names[0]], path)


def _read_h5_linear(path: Path) -> np.ndarray:
    import h5py

    total = np.eye(3)
    with h5py.File(str(path), "r") as h5:
        group = h5["TransformGroup"]
        for key in sorted(group, key=int):
            kind = group[key]["TransformType"][0]
            kind = kind.decode() if isinstance(kind, bytes) else str(kind)
            if kind.startswith("CompositeTransform") or kind.startswith("DisplacementFieldTransform"):
                continue
            total = total @ _matrix(kind, group[key]["TransformParameters"][()], path)
    return total


def ants_world_linear(transforms, invert=None) -> np.ndarray:
    """The RAS+ 3x3 map of directions from the moving image's world to the fixed image's world for ANTs
    transform files (ANTs order, optional ``invert`` flags) that map fixed points to moving points.

    Only the linear parts count (warps are skipped). Use as ``world_linear`` of :func:`reorient_bvecs`.
    """
    files = [transforms] if isinstance(transforms, (str, Path)) else list(transforms)
    invert = [False] * len(files) if invert is None else list(invert)
    fixed_to_moving = np.eye(3)
    for path, inv in zip(files, invert):
        path = Path(path)
        if path.name.endswith((".nii", ".nii.gz")):
            continue
        matrix = read_ants_linear(path)
        # a fixed point passes through the first file first
        fixed_to_moving = (np.linalg.inv(matrix) if inv else matrix) @ fixed_to_moving
    ras = _LPS_TO_RAS @ fixed_to_moving @ _LPS_TO_RAS
    return np.linalg.inv(ras)


def write_reoriented_fsl(
    bval_path: str | Path,
    bvec_path: str | Path,
    source_image: str | Path,
    target_image: str | Path,
    out_bval: str | Path,
    out_bvec: str | Path,
    transforms=(),
    invert=None,
    volume_transforms=None,
) -> tuple[Path, Path]:
    """Write the gradient table of ``source_image`` for ``target_image``: b-vectors rotated by the linear
    part of the registration ``transforms`` (ANTs files mapping target points to source points, e.g. the
    forward DWI -> template ``.h5``) and expressed in the FSL convention of the target image's axes.
    b-values are copied. With no transforms only the axes change (same world space).

    ``volume_transforms``: one more file per volume, acting last on a target point (its head-motion
    correction: b0-reference points -> that volume's points), so b-vector ``i`` is rotated by the linear
    part of its own chain: the head's rotation during volume ``i`` undone, then the b0 -> template part."""
    import nibabel as nib

    table = read_fsl(bval_path, bvec_path)
    source_affine = nib.load(str(source_image)).affine
    target_affine = nib.load(str(target_image)).affine
    if volume_transforms is not None:
        extra = list(volume_transforms)
        if len(extra) != len(table):
            raise GradientError(f"{bvec_path}: {len(table)} b-vectors but {len(extra)} per-volume transforms")
        files, flags = list(transforms), list(invert) if invert is not None else [False] * len(transforms)
        bvecs = np.array([reorient_bvecs(table.bvecs[i:i + 1], source_affine, target_affine,
                                         ants_world_linear(files + [f], flags + [False]))[0]
                          for i, f in enumerate(extra)])
    else:
        world_linear = ants_world_linear(transforms, invert) if transforms else None
        bvecs = reorient_bvecs(table.bvecs, source_affine, target_affine, world_linear)
    out_bval, out_bvec = Path(out_bval), Path(out_bvec)
    with atomic_path(out_bval) as tmp_bval, atomic_path(out_bvec) as tmp_bvec:
        write_fsl(GradientTable(table.bvals, bvecs), tmp_bval, tmp_bvec)
    return out_bval, out_bvec
