"""Training checkpoints without pickles: tensors in safetensors, scalar state in JSON, written atomically.

A checkpoint is a folder ``<work_dir>/checkpoints/step-NNNNNNNN/`` with

* ``tensors.safetensors``: ``model.<name>`` (live weights), ``ema.<name>`` (averaged weights) and
  ``optim.<i>.<key>`` (the optimiser state of parameter ``i`` of the stage's parameter list, e.g.
  ``exp_avg``, ``exp_avg_sq``, ``step``);
* ``state.json``: ``step`` (optimiser steps done, over both stages), ``stage``, the optimiser's
  ``param_groups``, the EMA update count, the training config, the learning rate last used, the
  history rows so far, and whatever else the loop records.

The folder is written under a temporary name and renamed into place, so a killed run leaves either a
whole checkpoint or none; only the newest ``keep`` checkpoints are kept.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..atomic import public_mode, replace_dir, staging_dir

LOGGER = logging.getLogger(__name__)

TENSORS_FILE = "tensors.safetensors"
STATE_FILE = "state.json"
FORMAT_VERSION = 1
_NAME = re.compile(r"^step-(\d{8})$")


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: ``tensors`` by flattened name, ``state`` the JSON object."""

    path: Path
    tensors: dict[str, torch.Tensor]
    state: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.state["step"])

    def module_state(self, prefix: str) -> dict[str, torch.Tensor]:
        """The state dict stored under ``prefix`` (``"model"`` or ``"ema"``)."""
        head = prefix + "."
        return {k[len(head):]: v for k, v in self.tensors.items() if k.startswith(head)}

    def optimizer_state(self) -> dict[str, Any]:
        """A ``torch.optim.Optimizer.load_state_dict`` argument rebuilt from the flat tensors."""
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in self.tensors.items():
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = value
        return {"state": state, "param_groups": self.state["optimizer"]["param_groups"]}


def _flat_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors = {}
    for index, entries in sd["state"].items():
        for name, value in entries.items():
            if not isinstance(value, torch.Tensor):
                value = torch.tensor(value)
            tensors[f"optim.{index}.{name}"] = value
    groups = json.loads(json.dumps(sd["param_groups"], default=_json_default))
    return tensors, {"param_groups": groups}


def _json_default(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint's JSON")


def _cpu(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def checkpoint_dir(work_dir: Path) -> Path:
    return Path(work_dir) / "checkpoints"


def save_checkpoint(folder: Path, step: int, model: nn.Module, ema: nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any], keep: int = 2) -> Path:
    """Write the checkpoint of ``step`` into ``folder`` (``.../checkpoints``) atomically; returns its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"step-{step:08d}"
    tensors = _cpu(model.state_dict(), "model")
    tensors.update(_cpu(ema.state_dict(), "ema"))
    optim_tensors, optim_meta = _flat_optimizer(optimizer)
    tensors.update({k: v.detach().to("cpu").contiguous().clone() for k, v in optim_tensors.items()})
    record = {"format_version": FORMAT_VERSION, **state, "step": int(step), "optimizer": optim_meta}
    staging = staging_dir(folder, prefix=f".{target.name}.")
    try:
        save_file(tensors, str(staging / TENSORS_FILE))
        public_mode(staging / TENSORS_FILE)  # safetensors writes 0600
        with open(staging / STATE_FILE, "w", encoding="utf-8") as handle:
            json.dump(record, handle, indent=1, allow_nan=True)
            handle.write("\n")
        replace_dir(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for old in list_checkpoints(folder)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    LOGGER.info("checkpoint %s", target)
    return target


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints in ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and _NAME.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def latest_checkpoint(folder: Path) -> Path | None:
    found = list_checkpoints(folder)
    return found[-1] if found else None


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint folder; ValueError naming the file when it is damaged."""
    path = Path(path)
    state_path = path / STATE_FILE
    try:
        with open(state_path, encoding="utf-8") as handle:
            state = json.load(handle)
        tensors = load_file(str(path / TENSORS_FILE))
    except Exception as error:  # json and safetensors raise their own types
        raise ValueError(f"{path}: checkpoint cannot be read ({error})") from error
    if state.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{state_path}: checkpoint format {state.get('format_version')!r} is not {FORMAT_VERSION}")
    return Checkpoint(path, tensors, state)


def clear_checkpoints(folder: Path) -> None:
    """Remove the checkpoints (and stale temporary folders) a previous run left in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        if p.is_dir() and (_NAME.match(p.name) or p.name.startswith(".step-")):
            shutil.rmtree(p, ignore_errors=True)
