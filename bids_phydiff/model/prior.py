"""The physics prior: what the b0 and the ADC atlas alone predict, as the base the network corrects.

For a target b-value b (s/mm^2) and the ADC-atlas slice D(x) (mm^2/s) the monoexponential signal is
S_b = S_0 exp(-b D). In the images' normalised units (x = 2 S / scale - 1, DESIGN.md section 4; the b0 and
the target share one scale) that is

    P = (b0 + 1) exp(-b D) - 1,

the physics baseline of :mod:`bids_phydiff.eval.baseline` on one slice. Outside the atlas (D = 0: the
template's brain ends there) P is -1, no signal: the b0 of the scalp and the eyes is no estimate of their
diffusion-weighted signal, and as a base there it gave the network a residual as large as the b0 to remove
(validation loss 6x that of the plain x0 model on real scans). With ``PhyDiffConfig.prior ==
"physics"`` the network's output is a correction to P (x0 = P + F). P carries the b0's anatomy at full
resolution (the CSF that is bright in the b0 and dark at high b, the grey/white edges), so the network has
to learn only what the atlas gets wrong: the subject's scale at b, and the direction dependence.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["physics_prior"]


def physics_prior(b0: Tensor, adc: Tensor, bval: Tensor) -> Tensor:
    """``(B, 1, H, W)``: P for ``b0`` (B, 1, H, W) normalised, ``adc`` (B, 1, H, W) mm^2/s and ``bval`` (B,)
    s/mm^2, in ``b0``'s dtype. Where the atlas is 0 (outside it) or the b0 has no signal (-1), P is -1."""
    b = bval.to(b0.dtype).view(-1, 1, 1, 1)
    adc = adc.to(b0.dtype)
    signal = (b0 + 1.0) * (-b * adc.clamp_min(0.0)).exp()
    return torch.where(adc > 0, signal, torch.zeros_like(signal)) - 1.0
