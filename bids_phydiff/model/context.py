"""The context channels the backbone sees (q-space completion, issue 19).

The maps of :mod:`bids_phydiff.prep.context` (``(B, C, H, W)``, 0 outside the brain) enter as they are.
For ``dti`` the model also derives, per sample, what the tensor itself predicts for the target gradient
(b in s/mm^2, g the unit b-vector in the frame of the maps): the apparent diffusivity along g,
g^T D g (um^2/ms, clamped at 0), and the tensor signal S0 exp(-b g^T D g) in the images' normalised units
(2 S / scale - 1, DESIGN.md section 4; -1 outside the brain, like an image). The network then has the
subject's own direction dependence at every pixel and has to learn what a tensor misses (the non-Gaussian
signal, noise), not how to turn six numbers and a direction into a signal.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .config import CONTEXT_CHANNELS, DERIVED_CONTEXT_CHANNELS, DIFFUSIVITY_SCALE

__all__ = ["context_inputs", "tensor_projection"]


def tensor_projection(maps: Tensor, bval: Tensor, bvec: Tensor) -> Tensor:
    """``(B, 2, H, W)``: g^T D g (um^2/ms) and the normalised tensor signal, from ``dti`` maps ``(B, 7, H, W)``
    (Dxx, Dxy, Dyy, Dxz, Dyz, Dzz in um^2/ms, S0 / scale), ``bval`` ``(B,)`` s/mm^2 and ``bvec`` ``(B, 3)``."""
    g = bvec.to(maps.dtype)
    g = g / g.norm(dim=1, keepdim=True).clamp_min(1e-8)
    gx, gy, gz = g.unbind(dim=1)
    weights = torch.stack([gx * gx, 2 * gx * gy, gy * gy, 2 * gx * gz, 2 * gy * gz, gz * gz], dim=1)  # (B, 6)
    adc = torch.einsum("bk,bkhw->bhw", weights, maps[:, :6]).clamp_min(0.0).unsqueeze(1)
    b = (bval.to(maps.dtype) / DIFFUSIVITY_SCALE).view(-1, 1, 1, 1)
    signal = maps[:, 6:7] * torch.exp(-b * adc)
    return torch.cat([adc, 2.0 * signal - 1.0], dim=1)


def context_inputs(kind: str, context: Tensor | None, bval: Tensor, bvec: Tensor, like: Tensor) -> list[Tensor]:
    """The backbone's context input channels, in ``like``'s dtype: ``[]`` for ``none``; the maps (and for
    ``dti`` :func:`tensor_projection`) otherwise. A missing, unexpected or misshapen context is a ValueError."""
    channels = CONTEXT_CHANNELS[kind]
    if context is None:
        if channels:
            raise ValueError(f"this model needs a {kind!r} context of {channels} channels; none was given")
        return []
    want = (like.shape[0], channels) + tuple(like.shape[2:])
    if not channels or tuple(context.shape) != want:
        raise ValueError(f"context must be {want} for context {kind!r}, got {tuple(context.shape)}")
    maps = context.to(like.dtype)
    if DERIVED_CONTEXT_CHANNELS[kind]:
        return [maps, tensor_projection(maps, bval, bvec)]
    return [maps]
