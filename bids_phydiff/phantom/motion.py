"""Head motion during a phantom DWI run: each volume sees the head at its own rigid position.

The parameters follow :mod:`bids_phydiff.prep.motion` (trans_x/y/z mm, rot_x/y/z rad, ``Rz Ry Rx`` about
the grid centre, which is the world origin for phantom grids): volume ``v``'s parameters map a point of
the head at its session position (the position of ``sourcedata/truth/sub-XX``) to where that point lies
while volume ``v`` is acquired. Each parameter follows a Gaussian random walk over the volumes starting
at 0 (slow drift with jitter, as real heads move), rescaled so that its largest absolute value is
``motion_mm`` times a factor drawn in [0.5, 1]: translations up to ``motion_mm`` mm and rotations up to
``motion_mm`` degrees about each axis (3 degrees turn a point 50 mm from the centre by 2.6 mm, the same
size as the translations).

Gradients. The scanner plays each gradient in its own frame, which is also the frame of the image axes,
and writes that nominal direction to the ``.bvec`` file: it does not know the head moved. So the
``.bvec`` of a moved run is the same scheme as without motion; what changes is the signal, because the
fibres turned with the head: volume ``v`` measures ``S(b, g . (R_v d))`` for a fibre ``d`` at the session
position, i.e. the head saw the gradient ``R_v^T g``. Motion correction must therefore rotate each
b-vector by its own volume's correction (``R_v^T``); leaving the file as written is the error it fixes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..prep.motion import PARAMETERS, framewise_displacement, rigid_matrix
from .deformation import Deformation


def random_motion(rng: np.random.Generator, n_volumes: int, motion_mm: float) -> np.ndarray:
    """Parameters ``(n_volumes, 6)`` (mm, radians) of a drifting head; zeros when ``motion_mm`` is 0."""
    if motion_mm <= 0 or n_volumes < 2:
        return np.zeros((n_volumes, 6))
    walk = np.cumsum(rng.standard_normal(size=(n_volumes, 6)), axis=0)
    walk -= walk[0]
    peak = np.max(np.abs(walk), axis=0)
    peak[peak == 0] = 1.0
    size = motion_mm * rng.uniform(0.5, 1.0, size=6)
    params = walk / peak * size
    params[:, 3:] = np.deg2rad(params[:, 3:])
    return params


def moved(deformation: Deformation, params) -> Deformation:
    """The subject's deformation with the head moved by one row of parameters (about the world origin).

    ``phi`` maps subject world points to the template; the moved head shows at ``x`` what the unmoved
    head showed at ``M^-1 x``, so the new map is ``phi(M^-1 x)``: rotation ``R_m R``, translation
    ``t_m + R_m t``.
    """
    m = rigid_matrix(params)
    rotation = m[:3, :3] @ deformation.rotation
    translation = m[:3, 3] + m[:3, :3] @ deformation.translation
    return deformation.with_rigid(rotation, translation)


def write_motion_truth(path: str | Path, params: np.ndarray) -> Path:
    """The true parameters of a run as a TSV (``volume`` then :data:`PARAMETERS` and
    ``framewise_displacement``), with a JSON sidecar stating the convention."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = framewise_displacement(params)
    lines = ["\t".join(["volume", *PARAMETERS, "framewise_displacement"])]
    lines += ["\t".join([str(v), *(f"{x:.8f}" for x in row), f"{fd[v]:.8f}"]) for v, row in enumerate(params)]
    path.write_text("\n".join(lines) + "\n")
    path.with_suffix(".json").write_text(json.dumps({
        "Description": "True head motion of each DWI volume: the rigid map from the head at its session position "
                       "(sourcedata/truth/sub-XX) to its position during the volume, x_volume = R x + t with "
                       "R = Rz(rot_z) Ry(rot_y) Rx(rot_x) about the world origin (the centre of the DWI grid). "
                       "The .bvec file is the nominal scheme in the scanner/image frame; the head saw R^T g.",
        "Units": {"trans": "mm", "rot": "rad", "framewise_displacement": "mm"},
    }, indent=2) + "\n")
    return path
