"""Random left-right mirroring and in-plane shifts of training slices.

With a handful of training subjects the network learns their images by heart (the validation loss on a
held-out subject rises after ~2000 steps while the training loss keeps falling, docs/evaluation.md). A
mirrored slice is another plausible brain; a shifted one moves the anatomy against the patch grid and the
grid's edge. Both are drawn per sample as pure functions of (seed, step, position in the global batch),
like the noise (:mod:`.batches`), so a resumed or data-parallel run augments exactly as a single one.

Slices are ``(C, H, W)`` with H the template's first axis (x: left-right in the MNI templates). Mirroring
flips H and negates the b-vector's first component (FSL convention of the template grid: the voxel axes),
which is the mirrored gradient's direction. Shifts are whole pixels, filled with the background of each
channel (-1 for the normalised images, 0 for the rest). Only the backbone stage is augmented: the tract
condition of the adapter stage has left and right tracts in separate channels, which a mirror would swap. The
backbone stage does not use that condition, so an augmented batch leaves it out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .batches import SAMPLE_STRIDE, step_generator

__all__ = ["Augmentation", "draw", "apply"]

_AUGMENT_STREAM = 5
_IMAGE_FILL = {"target": -1.0, "b0": -1.0}
"""Background of the normalised images; every other image channel (mask, ADC, context) is 0 outside."""
_IMAGES = ("target", "b0", "mask", "adc", "context")


@dataclass(frozen=True)
class Augmentation:
    """Per-sample draws: ``flip`` (B,) bool and ``shift`` (B, 2) whole pixels along (H, W)."""

    flip: torch.Tensor
    shift: torch.Tensor


def draw(seed: int, step: int, positions: torch.Tensor, flip: bool, max_shift: int) -> Augmentation:
    """The augmentation of each sample at ``positions`` of the global batch at ``step``: a mirror with
    probability 1/2 (when ``flip``), a shift uniform in ``[-max_shift, max_shift]`` along each axis."""
    flips, shifts = [], []
    for p in positions.tolist():
        g = step_generator(seed, step * SAMPLE_STRIDE + p, stream=_AUGMENT_STREAM)
        flips.append(bool(torch.randint(2, (1,), generator=g)) and flip)
        shifts.append(torch.randint(-max_shift, max_shift + 1, (2,), generator=g))
    return Augmentation(torch.tensor(flips, dtype=torch.bool),
                        torch.stack(shifts) if shifts else torch.zeros((0, 2), dtype=torch.long))


def _shift(image: torch.Tensor, dx: int, dy: int, fill: float) -> torch.Tensor:
    """``(C, H, W)`` moved by (dx, dy) pixels, the uncovered border set to ``fill``."""
    if dx == 0 and dy == 0:
        return image
    out = torch.full_like(image, fill)
    h, w = image.shape[-2:]
    out[..., max(dx, 0): h + min(dx, 0), max(dy, 0): w + min(dy, 0)] = \
        image[..., max(-dx, 0): h + min(-dx, 0), max(-dy, 0): w + min(-dy, 0)]
    return out


def apply(samples: dict[str, torch.Tensor], augmentation: Augmentation) -> dict[str, torch.Tensor]:
    """A collated batch (``(B, C, H, W)`` images, ``bvec`` (B, 3)) with each sample mirrored and shifted,
    without the tract condition (module docstring)."""
    out = {key: value for key, value in samples.items() if key != "tracts"}
    flip, shift = augmentation.flip, augmentation.shift
    if not flip.any() and not shift.any():
        return out
    for key in _IMAGES:
        if key not in samples:
            continue
        images = samples[key].clone()
        images[flip] = images[flip].flip(-2)
        fill = _IMAGE_FILL.get(key, 0.0)
        out[key] = torch.stack([_shift(im, int(dx), int(dy), fill) for im, (dx, dy) in zip(images, shift.tolist())])
    bvec = samples["bvec"].clone()
    bvec[flip, 0] = -bvec[flip, 0]
    out["bvec"] = bvec
    return out
