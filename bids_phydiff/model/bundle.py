"""The model bundle (DESIGN.md section 4): a folder with ``config.json`` and ``weights.safetensors``.

``config.json``::

    {"format_version": 1, "code_version": "...", "model": {PhyDiffConfig}, "grid": {GridSpec},
     "b_shells": [...], "normalisation": {...},
     "weights": {"file": "weights.safetensors", "sha256": "...", "tensors": {name: [shape]}},
     "metadata": {...}}

This module writes and reads only those two files. The training stage adds ``adc_atlas.nii.gz`` (one
volume per shell in ``b_shells``), ``train.json`` and ``training.tsv`` to the same folder; ``metadata``
takes small extra JSON; its ``sampler_shifts`` (the shifted passes the training chose, :mod:`.shifts`; 1
when absent) becomes the loaded model's ``shifts``. Writes are atomic: the bundle is built in a temporary
sibling folder and renamed into place. Loading verifies the format version, the weights' SHA-256, and every tensor's name, shape and
dtype; any problem is a :class:`BundleError` naming the file. No pickles anywhere.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .. import __version__
from ..atomic import public_mode, replace_dir, staging_dir
from .config import PhyDiffConfig
from .device import resolve_device
from .phydiff import PhyDiff
from .shifts import SHIFT_COUNTS

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
# The files the training stage adds beside those two (train/run.py writes them; synthesis and the
# evaluation read them): every bundle file name is spelled here and only here.
ADC_ATLAS_FILE = "adc_atlas.nii.gz"
"""(X, Y, Z, S) mm^2/s, one volume per shell of config.json's b_shells"""
TRACT_ATLAS_FILE = "tract_atlas.nii.gz"
"""(X, Y, Z, K) tract probabilities on the model grid (models with an adapter)"""
TRAIN_JSON = "train.json"
"""subjects, data hash, code version, seed, metrics"""
HISTORY_FILE = "training.tsv"
CURVE_FILE = "training_loss.png"
SHIFTS_KEY = "sampler_shifts"
"""metadata key: the shifted passes the training chose (:mod:`.shifts`), the loaded model's ``shifts``"""


class BundleError(ValueError):
    """A model bundle that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class GridSpec:
    """The model grid: template name, isotropic resolution (mm), shape (x, y, z) and 4x4 affine (RAS mm)."""

    template: str
    resolution: float
    shape: tuple[int, int, int]
    affine: tuple[tuple[float, float, float, float], ...]

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.shape)
        affine = tuple(tuple(float(v) for v in row) for row in self.affine)
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "affine", affine)
        object.__setattr__(self, "resolution", float(self.resolution))
        if not self.template or not isinstance(self.template, str):
            raise ValueError("grid template must be a non-empty string")
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"grid shape must be 3 positive integers, got {shape}")
        if len(affine) != 4 or any(len(row) != 4 for row in affine) or not all(map(math.isfinite, sum(affine, ()))):
            raise ValueError("grid affine must be a finite 4x4 matrix")
        if not (math.isfinite(self.resolution) and self.resolution > 0):
            raise ValueError(f"grid resolution must be positive, got {self.resolution}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "template": self.template,
            "resolution": self.resolution,
            "shape": list(self.shape),
            "affine": [list(row) for row in self.affine],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GridSpec:
        keys = {"template", "resolution", "shape", "affine"}
        if not isinstance(data, Mapping) or set(data) != keys:
            got = sorted(data) if isinstance(data, Mapping) else type(data).__name__
            raise ValueError(f"grid needs exactly the keys {sorted(keys)}, got {got}")
        return cls(data["template"], data["resolution"], tuple(data["shape"]), tuple(map(tuple, data["affine"])))


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle: the model (in eval mode) and what the config recorded."""

    path: Path
    model: PhyDiff
    grid: GridSpec
    b_shells: tuple[float, ...]
    normalisation: dict[str, Any]
    code_version: str
    weights_sha256: str
    metadata: dict[str, Any] = field(default_factory=dict)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _state_for_saving(model: PhyDiff) -> dict[str, torch.Tensor]:
    return {name: t.detach().to("cpu").contiguous().clone() for name, t in model.state_dict().items()}


def save_bundle(
    path: str | os.PathLike,
    model: PhyDiff,
    *,
    grid: GridSpec,
    b_shells: Sequence[float],
    normalisation: Mapping[str, Any],
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``config.json`` + ``weights.safetensors`` to the folder ``path`` atomically; returns the path.

    An existing folder is refused unless ``overwrite`` (then it is replaced as a whole).
    ``normalisation`` and ``metadata`` must be JSON-serialisable.
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target}: a bundle already exists there (pass overwrite=True to replace it)")
    shells = [float(b) for b in b_shells]
    if any(b <= a for a, b in zip(shells, shells[1:])):
        raise ValueError(f"b_shells must be strictly increasing, got {shells}")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_dir(target.parent, prefix=f".{target.name}.")
    try:
        tensors = _state_for_saving(model)
        weights = staging / WEIGHTS_FILE
        save_file(tensors, str(weights), metadata={"format_version": str(FORMAT_VERSION)})
        public_mode(weights)  # safetensors writes 0600; the group must read a shared model
        config = {
            "format_version": FORMAT_VERSION,
            "code_version": __version__,
            "model": model.config.to_dict(),
            "grid": grid.to_dict(),
            "b_shells": shells,
            "normalisation": dict(normalisation),
            "weights": {
                "file": WEIGHTS_FILE,
                "sha256": sha256_file(weights),
                "tensors": {name: list(t.shape) for name, t in tensors.items()},
            },
            "metadata": dict(metadata or {}),
        }
        with open(staging / CONFIG_FILE, "w", encoding="utf-8") as handle:
            json.dump(config, handle, indent=2, sort_keys=False, allow_nan=False)
            handle.write("\n")
        replace_dir(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("wrote model bundle %s (%d tensors)", target, len(tensors))
    return target


def read_bundle_config(path: str | os.PathLike) -> dict[str, Any]:
    """The checked ``config.json`` of a bundle (no weights read): for grid checks before loading."""
    folder = Path(path)
    config_path = folder / CONFIG_FILE
    if not folder.is_dir():
        raise BundleError(f"{folder}: not a model bundle folder")
    if not config_path.is_file():
        raise BundleError(f"{config_path}: missing; {folder} is not a model bundle")
    try:
        with open(config_path, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{config_path}: cannot be read as JSON ({error})") from error
    if not isinstance(config, dict):
        raise BundleError(f"{config_path}: expected a JSON object")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{config_path}: bundle format_version {version!r} is not supported (this code reads {FORMAT_VERSION})"
        )
    for key in ("model", "grid", "b_shells", "normalisation", "weights"):
        if key not in config:
            raise BundleError(f"{config_path}: missing key {key!r}")
    try:
        PhyDiffConfig.from_dict(config["model"])
        GridSpec.from_dict(config["grid"])
        [float(b) for b in config["b_shells"]]
    except (TypeError, ValueError) as error:
        raise BundleError(f"{config_path}: invalid entry ({error})") from error
    weights = config["weights"]
    if not isinstance(weights, dict) or not {"file", "sha256", "tensors"} <= set(weights):
        raise BundleError(f"{config_path}: 'weights' needs 'file', 'sha256' and 'tensors'")
    if Path(weights["file"]).name != weights["file"]:
        raise BundleError(
            f"{config_path}: weights file must be a plain name inside the bundle, got {weights['file']!r}"
        )
    return config


def load_bundle(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> Bundle:
    """Load and verify a bundle; the model is returned in eval mode on ``device`` (see ``resolve_device``)."""
    folder = Path(path)
    config = read_bundle_config(folder)
    config_path = folder / CONFIG_FILE
    weights_path = folder / config["weights"]["file"]
    if not weights_path.is_file():
        raise BundleError(f"{weights_path}: missing")
    digest = sha256_file(weights_path)
    if digest != config["weights"]["sha256"]:
        raise BundleError(
            f"{weights_path}: SHA-256 {digest} does not match {config['weights']['sha256']} recorded in "
            f"{config_path}; the file is corrupt or was modified"
        )
    model = PhyDiff(PhyDiffConfig.from_dict(config["model"]))
    expected = model.state_dict()
    try:
        with safe_open(str(weights_path), framework="pt", device="cpu") as handle:
            names = set(handle.keys())
            missing = sorted(set(expected) - names)
            unexpected = sorted(names - set(expected))
            if missing or unexpected:
                raise BundleError(
                    f"{weights_path}: tensors do not match the model in {config_path}: "
                    f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''} ({len(missing)}), "
                    f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''} ({len(unexpected)})"
                )
            state = {}
            for name in sorted(names):
                tensor = handle.get_tensor(name)
                want = expected[name]
                if tuple(tensor.shape) != tuple(want.shape) or tensor.dtype != want.dtype:
                    raise BundleError(
                        f"{weights_path}: tensor {name!r} is {tuple(tensor.shape)} {tensor.dtype}, the model "
                        f"needs {tuple(want.shape)} {want.dtype}"
                    )
                state[name] = tensor
    except BundleError:
        raise
    except Exception as error:  # safetensors raises its own error types for malformed files
        raise BundleError(f"{weights_path}: cannot be read as safetensors ({error})") from error
    model.load_state_dict(state, strict=True)
    shifts = config.get("metadata", {}).get(SHIFTS_KEY, 1)
    if shifts not in SHIFT_COUNTS:
        raise BundleError(f"{config_path}: metadata {SHIFTS_KEY} must be one of {SHIFT_COUNTS}, got {shifts!r}")
    model.shifts = shifts
    model.to(resolve_device(device)).eval()
    return Bundle(
        path=folder,
        model=model,
        grid=GridSpec.from_dict(config["grid"]),
        b_shells=tuple(float(b) for b in config["b_shells"]),
        normalisation=dict(config["normalisation"]),
        code_version=str(config.get("code_version", "")),
        weights_sha256=digest,
        metadata=dict(config.get("metadata", {})),
    )
