"""Head motion as rigid transforms: the six parameters, framewise displacement and the confounds table.

Convention of the parameters (shared by the phantom's truth and the motion correction's estimates).
A volume's motion is the rigid map that takes a point of the head as it lies in the *reference* (the b0
reference of the run) to where the same point of the head lies in the *volume*, in world RAS+ mm:

    x_volume = R (x_reference - c) + c + t,     R = Rz(rot_z) @ Ry(rot_y) @ Rx(rot_x)

``t = (trans_x, trans_y, trans_z)`` in mm, ``rot_*`` in radians about the world x, y and z axes
(right-handed, RAS+), ``c`` the world position of the reference grid's centre (the rotation centre, close
to the head's centre for any field of view). This is also the direction ANTs needs to resample a volume
onto the reference grid (reference points -> volume points).

Framewise displacement (Power et al. 2012): ``FD[i] = sum |d trans| + 50 mm * sum |d rot|`` between
volume ``i - 1`` and ``i`` (rotations as arc length on a 50 mm sphere), ``FD[0] = 0``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..atomic import atomic_path

PARAMETERS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
FD_RADIUS_MM = 50.0
FD_COLUMN = "framewise_displacement"

_LPS = np.diag([-1.0, -1.0, 1.0])


def rotation_matrix(rot_xyz) -> np.ndarray:
    """``Rz @ Ry @ Rx`` (3, 3) for rotations (radians) about the world x, y and z axes."""
    ax, ay, az = np.asarray(rot_xyz, dtype=np.float64).reshape(3)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def rotation_angles(rotation: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rotation_matrix`: ``(rot_x, rot_y, rot_z)`` radians, for angles within +-90 degrees."""
    r = np.asarray(rotation, dtype=np.float64)
    return np.array([np.arctan2(r[2, 1], r[2, 2]), np.arcsin(-np.clip(r[2, 0], -1.0, 1.0)),
                     np.arctan2(r[1, 0], r[0, 0])])


def rigid_matrix(params, centre=(0.0, 0.0, 0.0)) -> np.ndarray:
    """The (4, 4) world RAS+ map ``x_reference -> x_volume`` of one row of :data:`PARAMETERS`."""
    params = np.asarray(params, dtype=np.float64).reshape(6)
    centre = np.asarray(centre, dtype=np.float64).reshape(3)
    rotation = rotation_matrix(params[3:])
    out = np.eye(4)
    out[:3, :3] = rotation
    out[:3, 3] = centre - rotation @ centre + params[:3]
    return out


def rigid_parameters(matrix: np.ndarray, centre=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Inverse of :func:`rigid_matrix`: the six parameters ``(6,)`` of a (4, 4) rigid world map."""
    matrix = np.asarray(matrix, dtype=np.float64)
    centre = np.asarray(centre, dtype=np.float64).reshape(3)
    rotation = matrix[:3, :3]
    translation = matrix[:3, 3] - centre + rotation @ centre
    return np.concatenate([translation, rotation_angles(rotation)])


def framewise_displacement(params: np.ndarray, radius_mm: float = FD_RADIUS_MM) -> np.ndarray:
    """Power's FD ``(N,)`` mm from parameters ``(N, 6)`` (mm, radians); ``FD[0] = 0``."""
    params = np.asarray(params, dtype=np.float64).reshape(-1, 6)
    steps = np.abs(np.diff(params, axis=0))
    fd = steps[:, :3].sum(axis=1) + radius_mm * steps[:, 3:].sum(axis=1)
    return np.concatenate([[0.0], fd])


def drift_anchor(b0_worlds, b0_index, index, centre=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Where the head was on average during the volumes ``index``, from the b0 volumes' maps ``b0_worlds``
    ((4, 4) each, reference -> volume) at positions ``b0_index`` in the series: their parameters interpolated
    linearly in acquisition order (held before the first and after the last b0), averaged; a (4, 4) map."""
    params = np.array([rigid_parameters(w, centre) for w in b0_worlds]).reshape(-1, 6)
    at = np.column_stack([np.interp(np.asarray(index, float), np.asarray(b0_index, float), params[:, k])
                          for k in range(6)])
    return rigid_matrix(at.mean(axis=0), centre)


def rotation_angle(rotation: np.ndarray) -> float:
    """The angle (radians) of a rotation matrix (3, 3): the most it turns any vector."""
    return float(np.arccos(np.clip((np.trace(np.asarray(rotation)[:3, :3]) - 1) / 2, -1, 1)))


def motion_errors(estimated: np.ndarray, truth: np.ndarray, centre=(0.0, 0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """Per-volume errors ``(translation mm (N,), rotation degrees (N,))`` of estimated parameters ``(N, 6)``
    against true ones, both about ``centre``.

    The two may be relative to different frames (an estimate to the b0 reference, a phantom's truth to the
    head's session position): the fixed rigid map between them (the median over volumes of
    ``truth^-1 @ estimate``) is removed first. The rotation error is the angle of the residual rotation.
    """
    true = [rigid_matrix(p, centre) for p in np.asarray(truth).reshape(-1, 6)]
    found = [rigid_matrix(p, centre) for p in np.asarray(estimated).reshape(-1, 6)]
    offset = rigid_matrix(np.median([rigid_parameters(np.linalg.inv(t) @ f) for t, f in zip(true, found)], axis=0))
    trans, rot = [], []
    for t, f in zip(true, found):
        expected = t @ offset
        residual = np.linalg.inv(expected) @ f
        trans.append(np.linalg.norm(expected[:3, 3] - f[:3, 3]))
        rot.append(np.degrees(rotation_angle(residual)))
    return np.array(trans), np.array(rot)


def grid_centre(affine: np.ndarray, shape) -> np.ndarray:
    """World RAS+ position (3,) mm of the centre of a voxel grid (the rotation centre ``c``)."""
    centre_index = (np.asarray(shape[:3], dtype=np.float64) - 1.0) / 2.0
    return np.asarray(affine, dtype=np.float64)[:3, :3] @ centre_index + np.asarray(affine)[:3, 3]


# ----------------------------------------------------------------------------------------------------------
# ANTs rigid transforms (LPS, fixed point -> moving point) <-> world RAS+ maps


def ants_to_world(matrix: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """(4, 4) RAS+ map of an ANTs/ITK linear transform given as its (3, 3) ``matrix`` and the ``offset`` (3,)
    of ``y = matrix @ x + offset`` in LPS (ITK's ``GetOffset``, the centre folded in)."""
    out = np.eye(4)
    out[:3, :3] = _LPS @ np.asarray(matrix, dtype=np.float64) @ _LPS
    out[:3, 3] = _LPS @ np.asarray(offset, dtype=np.float64)
    return out


def world_to_ants(world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`ants_to_world`: ``(matrix (3, 3), offset (3,))`` in LPS."""
    world = np.asarray(world, dtype=np.float64)
    return _LPS @ world[:3, :3] @ _LPS, _LPS @ world[:3, 3]


# ----------------------------------------------------------------------------------------------------------
# the confounds table


def confounds_table(params: np.ndarray) -> tuple[list[str], np.ndarray]:
    """``(columns, rows (N, 7))``: the six parameters then ``framewise_displacement``."""
    params = np.asarray(params, dtype=np.float64).reshape(-1, 6)
    return [*PARAMETERS, FD_COLUMN], np.column_stack([params, framewise_displacement(params)])


def write_confounds(params: np.ndarray, out_tsv: str | Path) -> Path:
    """Write the confounds TSV (header row, one row per volume; mm and radians, 6 decimals)."""
    columns, rows = confounds_table(params)
    lines = ["\t".join(columns)] + ["\t".join(f"{v:.6f}" for v in row) for row in rows]
    out_tsv = Path(out_tsv)
    with atomic_path(out_tsv) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return out_tsv


def read_confounds(path: str | Path) -> dict[str, np.ndarray]:
    """The columns of a confounds (or phantom motion truth) TSV as float arrays; ``n/a`` reads as NaN."""
    lines = [line.split("\t") for line in Path(path).read_text().splitlines() if line.strip()]
    header, rows = lines[0], lines[1:]
    values = np.array([[np.nan if v == "n/a" else float(v) for v in row] for row in rows], dtype=np.float64)
    values = values.reshape(len(rows), len(header))
    return {name: values[:, i] for i, name in enumerate(header)}


def parameters_of(columns: dict[str, np.ndarray]) -> np.ndarray:
    """``(N, 6)`` parameters from the columns :func:`read_confounds` returns."""
    return np.column_stack([columns[name] for name in PARAMETERS])


def confounds_sidecar(fd_threshold: float, params: np.ndarray, method: str) -> dict:
    """The JSON sidecar of the confounds TSV: every column described, and the volumes above the FD threshold."""
    fd = framewise_displacement(params)
    above = [int(i) for i in np.flatnonzero(fd > fd_threshold)]
    axes = {"x": "left to right", "y": "posterior to anterior", "z": "inferior to superior"}
    sidecar = {
        **{f"trans_{a}": {"Description": f"Translation along the world {a} axis (RAS+, {d}) of the head from "
                                         "the b0 reference to this volume", "Units": "mm"} for a, d in axes.items()},
        **{f"rot_{a}": {"Description": f"Rotation about the world {a} axis (right-handed, RAS+) of the head from the "
                                       "b0 reference to this volume, about the centre of the reference grid; the "
                                       "rotation is Rz @ Ry @ Rx", "Units": "rad"} for a in axes},
        FD_COLUMN: {"Description": "Framewise displacement (Power et al. 2012): sum of the absolute changes of the "
                                   f"translations and of the rotations as arc length on a {FD_RADIUS_MM:g} mm sphere, "
                                   "from the previous volume; 0 for the first volume", "Units": "mm"},
        "Method": method,
        "FramewiseDisplacementThreshold": float(fd_threshold),
        "VolumesAboveThreshold": above,
        "MeanFramewiseDisplacement": round(float(fd.mean()), 6),
        "MaxFramewiseDisplacement": round(float(fd.max()), 6),
    }
    return sidecar


def write_json(data: dict, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
    return path
