"""Small building blocks shared by the backbone, the conditioning and the adapter.

Token tensors are channels-last, (..., C). Norms reduce in float32 and return the input dtype (torch's
``rms_norm``, a fused kernel on CUDA), so they behave the same under bf16 autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def zero_init(module: nn.Module) -> nn.Module:
    """Set every parameter of ``module`` to zero (output projections that start as the identity path)."""
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
    return module


def rms_normalize(x: Tensor, eps: float = 1e-6) -> Tensor:
    """x / sqrt(mean(x^2) + eps) over the last axis (reduced in float32 for low-precision inputs)."""
    return F.rms_norm(x, (x.shape[-1],), eps=eps)


class RMSNorm(nn.Module):
    """RMS normalisation over the last axis with a learned per-channel gain (init 1)."""

    def __init__(self, features: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(features))

    def forward(self, x: Tensor) -> Tensor:
        return rms_normalize(x, self.eps) * self.weight.to(x.dtype)


class AdaRMSNorm(nn.Module):
    """RMS normalisation whose per-channel gain is ``1 + Linear(cond)`` (the linear starts at zero).

    ``x``: (B, ..., C); ``cond``: (B, cond_features).
    """

    def __init__(self, features: int, cond_features: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.gain = zero_init(nn.Linear(cond_features, features, bias=False))

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        gain = 1.0 + self.gain(cond)
        gain = gain.reshape(gain.shape[0], *([1] * (x.ndim - 2)), gain.shape[-1])
        return rms_normalize(x, self.eps) * gain.to(x.dtype)


class GEGLU(nn.Module):
    """Gated GELU: the input's last axis holds (value, gate) halves; returns value * gelu(gate)."""

    def forward(self, x: Tensor) -> Tensor:
        value, gate = x.chunk(2, dim=-1)
        return value * F.gelu(gate)
