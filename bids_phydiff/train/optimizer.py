"""The AdamW optimiser of a training stage: weight decay on weight matrices only, fused kernels on CUDA.

Weight decay pulls parameters towards zero. That is the point for the weight matrices of linear and
convolution layers, and wrong for parameters whose zero means something else or whose size is what they
learn: norm scales (1 = identity), attention temperatures, lerp (mix) weights, biases and embedding tables
(as k-diffusion's transformers do). The rule: a parameter is decayed when it has two or more dimensions and
is not the table of an ``nn.Embedding``.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

DECAY, NO_DECAY = "decay", "no_decay"


def parameter_groups(model: nn.Module, params: Iterable[nn.Parameter], weight_decay: float) -> list[dict]:
    """AdamW parameter groups of ``params`` (parameters of ``model``, e.g. one training stage's): ``"decay"``
    with ``weight_decay`` and ``"no_decay"`` with 0, in the order given; empty groups are left out."""
    tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for p in params:
        (decay if p.ndim >= 2 and id(p) not in tables else no_decay).append(p)
    groups = [{"name": DECAY, "params": decay, "weight_decay": float(weight_decay)},
              {"name": NO_DECAY, "params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, params: Iterable[nn.Parameter], lr: float, betas: tuple[float, float],
                    eps: float, weight_decay: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW over :func:`parameter_groups`; the fused kernel on CUDA (one launch for all parameters), the
    default (for-each) implementation elsewhere, so that CPU runs stay as they were."""
    fused = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(parameter_groups(model, params, weight_decay), lr=lr, betas=betas, eps=eps, **fused)
