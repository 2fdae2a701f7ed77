"""Exponential moving average of the trainable weights, kept as a second copy of the model.

The EMA model is what validation uses and what the bundle stores. ``update`` moves only the parameters
that currently require gradients (the stage being trained), with ``lerp`` so that a parameter whose
value did not change stays bit-identical; buffers are copied. The effective decay warms up as
``min(decay, (1 + n) / (10 + n))`` over the ``n`` updates of the current stage, so a short run's EMA is
not dominated by the initial weights.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """``module``: the averaged copy (eval mode, no gradients); ``updates``: updates in this stage."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.updates = 0

    def effective_decay(self) -> float:
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Average the trainable parameters of ``model`` (same architecture) into ``module``."""
        weight = 1.0 - self.effective_decay()
        shadow = dict(self.module.named_parameters())
        for name, p in model.named_parameters():
            if p.requires_grad:
                shadow[name].lerp_(p.detach().to(shadow[name].dtype), weight)
        shadow_buffers = dict(self.module.named_buffers())
        for name, b in model.named_buffers():
            shadow_buffers[name].copy_(b)
        self.updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Load the averaged weights into ``model``."""
        model.load_state_dict(self.module.state_dict())

    def reset_counter(self) -> None:
        """Start the decay warm-up again (at the start of a new stage)."""
        self.updates = 0
