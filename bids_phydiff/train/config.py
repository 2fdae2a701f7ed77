"""The training configuration: one frozen dataclass, its presets, and loading it from a file.

Presets (``tiny``, ``small``, ``paper``) match the model presets of the same name. A config file (JSON
or YAML) holds the fields of :class:`TrainConfig`, optionally on top of a preset named by ``preset``::

    {"preset": "tiny", "max_steps": 500, "model": "small"}

``model`` is a model preset name or a full model config object (``PhyDiffConfig.to_dict()`` form).
Unknown keys and bad values are a :class:`TrainConfigError` naming the file and the key (exit code 64).

Units and meanings: ``max_steps`` optimiser steps of stage 1 (backbone); ``adapter_steps`` steps of
stage 2 (XTRACT adapter, backbone frozen; only run when a tract atlas is given); ``batch_size`` the
GLOBAL batch (samples per step summed over all processes); ``lr`` the peak learning rate reached after
``warmup_steps`` of linear warm-up, then cosine decay to ``lr * min_lr_fraction`` at the stage's last
step (each stage has its own warm-up and decay); ``val_every`` / ``checkpoint_every`` in steps (0 = only
at the end); ``val_samples`` how many held-out slices the validation loss averages over.
``weight_decay``: AdamW's decoupled decay, applied to weight matrices only (:mod:`.optimizer`).
``compile``: run the training step's forward and backward through ``torch.compile`` (one compilation per
stage, paid at the first step: on 2 CPU cores about a minute for the tiny preset, whose step it then makes
about 1.7x faster; validation and sampling stay eager).
``augment_flip`` / ``augment_shift``: mirror each backbone-stage training slice left-right with probability
1/2 / shift it by up to this many whole pixels along each in-plane axis (:mod:`.augment`; the adapter stage
is not augmented). A mirror needs a model without a context (its maps would have to be mirrored too). Off
in the presets: on a real fold at 3000 steps it lowered the validation loss but not the blur
(docs/evaluation.md).
``context_shells``: for a model with a context (``model.context`` ``dti``/``sh4``, issue 19), the acquired
shells (b in s/mm^2) a sample may take its context from; None = every acquired shell of each run. A run
without any of them is refused at training (exit 65).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..errors import UsageError
from ..model.config import PRESETS as MODEL_PRESETS
from ..model.config import PhyDiffConfig


class TrainConfigError(UsageError, ValueError):
    """A training configuration that cannot be used (exit code 64); the message names file and key."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything the training loop needs besides the data (see the module docstring for units)."""

    model: str | PhyDiffConfig = "tiny"
    max_steps: int = 300
    batch_size: int = 16
    lr: float = 5e-4
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0
    warmup_steps: int = 20
    min_lr_fraction: float = 0.1
    ema_decay: float = 0.999
    val_every: int = 50
    val_samples: int = 64
    checkpoint_every: int = 100
    seed: int = 3407
    adapter_steps: int = 100
    num_workers: int = 0
    bf16: bool = True
    compile: bool = False
    augment_flip: bool = False
    augment_shift: int = 0
    context_shells: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        for key in _FLOAT_FIELDS:
            object.__setattr__(self, key, _as_float(key, getattr(self, key)))
        betas = self.betas
        if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__"):
            raise TrainConfigError(f"betas: must be two numbers in [0, 1), got {betas!r}")
        object.__setattr__(self, "betas", tuple(_as_float("betas", b) for b in betas))
        model = self.model
        if isinstance(model, Mapping):
            try:
                model = PhyDiffConfig.from_dict(model)
            except (TypeError, ValueError) as error:
                raise TrainConfigError(f"model: {error}") from None
            object.__setattr__(self, "model", model)
        shells = self.context_shells
        if shells is not None:
            if isinstance(shells, (str, bytes)) or not hasattr(shells, "__len__") or len(shells) == 0:
                raise TrainConfigError(f"context_shells: must be a list of b-values (s/mm^2) or null, got {shells!r}")
            shells = tuple(_as_float("context_shells", b) for b in shells)
            if any(b <= 0 for b in shells):
                raise TrainConfigError(f"context_shells: b-values must be > 0 s/mm^2, got {list(shells)!r}")
            object.__setattr__(self, "context_shells", tuple(sorted(set(shells))))
        checks = [
            (isinstance(model, PhyDiffConfig) or model in MODEL_PRESETS,
             "model", f"must be a model preset {sorted(MODEL_PRESETS)} or a model config, got {model!r}"),
            (_is_int(self.max_steps) and self.max_steps >= 1, "max_steps", f"must be an integer >= 1, got {self.max_steps!r}"),
            (_is_int(self.batch_size) and self.batch_size >= 1, "batch_size", f"must be an integer >= 1, got {self.batch_size!r}"),
            (self.lr > 0, "lr", f"must be > 0, got {self.lr!r}"),
            (self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay!r}"),
            (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas", f"must be two numbers in [0, 1), got {self.betas!r}"),
            (self.eps > 0, "eps", f"must be > 0, got {self.eps!r}"),
            (self.grad_clip > 0, "grad_clip", f"must be > 0, got {self.grad_clip!r}"),
            (_is_int(self.warmup_steps) and self.warmup_steps >= 0, "warmup_steps", f"must be an integer >= 0, got {self.warmup_steps!r}"),
            (0 <= self.min_lr_fraction <= 1, "min_lr_fraction", f"must be in [0, 1], got {self.min_lr_fraction!r}"),
            (0 <= self.ema_decay < 1, "ema_decay", f"must be in [0, 1), got {self.ema_decay!r}"),
            (_is_int(self.val_every) and self.val_every >= 0, "val_every", f"must be an integer >= 0, got {self.val_every!r}"),
            (_is_int(self.val_samples) and self.val_samples >= 1, "val_samples", f"must be an integer >= 1, got {self.val_samples!r}"),
            (_is_int(self.checkpoint_every) and self.checkpoint_every >= 0, "checkpoint_every",
             f"must be an integer >= 0, got {self.checkpoint_every!r}"),
            (_is_int(self.seed) and self.seed >= 0, "seed", f"must be an integer >= 0, got {self.seed!r}"),
            (_is_int(self.adapter_steps) and self.adapter_steps >= 0, "adapter_steps",
             f"must be an integer >= 0, got {self.adapter_steps!r}"),
            (_is_int(self.num_workers) and self.num_workers >= 0, "num_workers", f"must be an integer >= 0, got {self.num_workers!r}"),
            (isinstance(self.bf16, bool), "bf16", f"must be true or false, got {self.bf16!r}"),
            (isinstance(self.compile, bool), "compile", f"must be true or false, got {self.compile!r}"),
            (isinstance(self.augment_flip, bool), "augment_flip", f"must be true or false, got {self.augment_flip!r}"),
            (_is_int(self.augment_shift) and self.augment_shift >= 0, "augment_shift",
             f"must be an integer >= 0 (pixels), got {self.augment_shift!r}"),
            (not self.augment_flip or _model_context(model) == "none", "augment_flip",
             "cannot mirror a model with a context (its direction maps are not mirrored); use augment_shift"),
            (self.context_shells is None or _model_context(model) != "none", "context_shells",
             "needs a model with a context (model.context dti or sh4); this model has none"),
        ]
        for ok, key, message in checks:
            if not ok:
                raise TrainConfigError(f"{key}: {message}")

    def model_config(self) -> PhyDiffConfig:
        """The model architecture (a preset resolved to its config)."""
        return self.model if isinstance(self.model, PhyDiffConfig) else MODEL_PRESETS[self.model]

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with fields replaced (checked again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types; ``from_dict(to_dict())`` gives an equal config."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["betas"] = list(self.betas)
        if self.context_shells is not None:
            out["context_shells"] = list(self.context_shells)
        if isinstance(self.model, PhyDiffConfig):
            out["model"] = self.model.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "training config") -> TrainConfig:
        """From a mapping of field names (plus an optional ``preset`` to start from)."""
        if not isinstance(data, Mapping):
            raise TrainConfigError(f"{where}: expected an object of settings, got {type(data).__name__}")
        data = dict(data)
        base = TrainConfig()
        if "preset" in data:
            name = data.pop("preset")
            if name not in TRAIN_PRESETS:
                raise TrainConfigError(f"{where}: key 'preset': unknown preset {name!r}; choose from {sorted(TRAIN_PRESETS)}")
            base = TRAIN_PRESETS[name]
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise TrainConfigError(
                f"{where}: unknown key(s) {unknown}; known keys are {sorted(names | {'preset'})}"
            )
        try:
            return dataclasses.replace(base, **data)
        except TrainConfigError as error:
            raise TrainConfigError(f"{where}: key {error}") from None
        except (TypeError, ValueError) as error:
            raise TrainConfigError(f"{where}: {error}") from None


_FLOAT_FIELDS = ("lr", "weight_decay", "eps", "grad_clip", "min_lr_fraction", "ema_decay")


def _as_float(key: str, value: Any) -> float:
    """A number (YAML 1.1 reads ``5e-4`` as a string, so numeric strings are accepted)."""
    if isinstance(value, bool):
        raise TrainConfigError(f"{key}: must be a number, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise TrainConfigError(f"{key}: must be a number, got {value!r}") from None
    if out != out or out in (float("inf"), float("-inf")):
        raise TrainConfigError(f"{key}: must be finite, got {value!r}")
    return out


def _model_context(model: Any) -> str | None:
    """The context kind of a model preset name or config (None for something that is neither)."""
    if isinstance(model, PhyDiffConfig):
        return model.context
    return MODEL_PRESETS[model].context if isinstance(model, str) and model in MODEL_PRESETS else None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


TRAIN_PRESETS: dict[str, TrainConfig] = {
    # tests and smoke runs on CPU (32x32 slices): seconds to a minute
    "tiny": TrainConfig(model="tiny", max_steps=300, batch_size=16, warmup_steps=20, ema_decay=0.99,
                        val_every=50, val_samples=64, checkpoint_every=100, adapter_steps=100),
    # CPU demos (64x64 slices): tens of minutes on a laptop
    "small": TrainConfig(model="small", max_steps=3000, batch_size=32, warmup_steps=100, ema_decay=0.999,
                         val_every=250, val_samples=256, checkpoint_every=500, adapter_steps=1000),
    # the published setting (batch 48, AdamW 5e-4 / 1e-4 / (0.9, 0.95), clip 1.0, bf16, seed 3407) on GPUs
    "paper": TrainConfig(model="paper", max_steps=200_000, batch_size=48, warmup_steps=1000, ema_decay=0.9999,
                         val_every=2000, val_samples=1024, checkpoint_every=5000, adapter_steps=50_000),
}


def load_train_config(name_or_path: str | Path) -> TrainConfig:
    """A preset by name (``tiny``/``small``/``paper``) or a ``.json`` / ``.yaml`` / ``.yml`` file.

    Raises :class:`TrainConfigError` (exit 64) for an unknown name, a missing or unreadable file, or a
    file with unknown keys or bad values; the message names the file and the key.
    """
    text = str(name_or_path)
    if text in TRAIN_PRESETS:
        return TRAIN_PRESETS[text]
    path = Path(text)
    if path.suffix.lower() not in (".json", ".yaml", ".yml"):
        raise TrainConfigError(
            f"training config {text!r} is neither a preset {sorted(TRAIN_PRESETS)} nor a .json/.yaml file"
        )
    if not path.is_file():
        raise TrainConfigError(f"{path}: training config file not found")
    try:
        raw = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            data = json.loads(raw)
        else:
            import yaml

            data = yaml.safe_load(raw)
    except Exception as error:  # json and yaml raise their own error types
        raise TrainConfigError(f"{path}: cannot be parsed ({error})") from None
    if data is None:
        data = {}
    return TrainConfig.from_dict(data, where=str(path))
