"""Shifted passes: the network averaged over passes on inputs moved against its token grid.

The model's token grid is fixed in the image, so what one pass leaves in each token repeats with the patch:
a faint texture of the token period that the seam score sees (docs/evaluation.md, "The token-period
texture"). A pass on the input moved by half a patch carries that pattern with the opposite phase, so in the
mean of the two its period-``p`` part cancels. A network that has learnt where the anatomy lies on the grid
(the phantom's subjects all share one anatomy) loses more than it gains from a moved input, so the choice is
the model's, made on its validation subjects at the end of training (``PhyDiff.shifts``, the bundle's
``sampler_shifts``); ``SamplerConfig.shifts`` overrides it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

SHIFT_COUNTS = (1, 2, 4)
"""Passes that may be averaged: one, two (none and half a patch along both axes), four (every half-patch
offset)."""


def token_shifts(count: int, patch: int) -> list[tuple[int, int]]:
    """The in-plane move ``(dy, dx)`` in pixels of each of ``count`` passes for a model of patch size ``patch``:
    none, then half a patch along both axes, then along each alone."""
    if count not in SHIFT_COUNTS:
        raise ValueError(f"shifted passes must be one of {SHIFT_COUNTS}, got {count}")
    half = patch // 2
    return [(0, 0), (half, half), (0, half), (half, 0)][:count]


@dataclass(frozen=True)
class GridShift:
    """Moves (B, C, H, W) images by ``shift`` = (dy, dx) pixels against the model's token grid: edge-replicated
    by dy (dx) pixels before and ``multiple`` - dy (dx) after, so that the grid stays a whole multiple of the
    model's size multiple (and nothing wraps round its edge); :meth:`back` crops a network output to the
    original grid. (0, 0) is the identity."""

    shift: tuple[int, int]
    multiple: int

    def __call__(self, x: Tensor | None) -> Tensor | None:
        if x is None or self.shift == (0, 0):
            return x
        (dy, dx), m = self.shift, self.multiple
        return F.pad(x, (dx, m - dx, dy, m - dy), mode="replicate")

    def back(self, x: Tensor) -> Tensor:
        if self.shift == (0, 0):
            return x
        (dy, dx), m = self.shift, self.multiple
        return x[..., dy : x.shape[-2] - (m - dy), dx : x.shape[-1] - (m - dx)]
