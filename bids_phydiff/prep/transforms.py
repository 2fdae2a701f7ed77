"""Chains of ANTs transform files between a moving and a fixed space.

Transform lists are in ANTs order: the order in which a fixed-space point passes through them (the first
file acts first on the point), as ``ants.apply_transforms(fixed, moving, transformlist)`` expects. The
files map *points* of the fixed space to the moving space; that is what resamples the moving *image* onto
the fixed grid. :mod:`.registration` makes chains, :mod:`.resample` writes and applies them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TransformChain:
    """A mapping between a moving and a fixed space as ANTs transform files.

    ``forward``/``forward_invert``: resample a moving-space image onto a fixed-space grid
    (``ants.apply_transforms(fixed, moving, list(forward), whichtoinvert=list(forward_invert))``); the files
    map fixed points to moving points. ``inverse``/``inverse_invert``: the other way round.
    """

    forward: tuple[Path, ...]
    forward_invert: tuple[bool, ...]
    inverse: tuple[Path, ...]
    inverse_invert: tuple[bool, ...]

    def __post_init__(self):
        for name in ("forward", "inverse"):
            object.__setattr__(self, name, tuple(Path(p) for p in getattr(self, name)))
        for name in ("forward_invert", "inverse_invert"):
            object.__setattr__(self, name, tuple(bool(b) for b in getattr(self, name)))
        if len(self.forward) != len(self.forward_invert) or len(self.inverse) != len(self.inverse_invert):
            raise ValueError("one invert flag per transform file is needed")

    def then(self, other: "TransformChain") -> "TransformChain":
        """This chain (A -> B) followed by ``other`` (B -> C): the chain A -> C.

        A C-space point goes through ``other``'s files first, then this chain's; an A-space point the
        other way round.
        """
        return TransformChain(
            forward=other.forward + self.forward,
            forward_invert=other.forward_invert + self.forward_invert,
            inverse=self.inverse + other.inverse,
            inverse_invert=self.inverse_invert + other.inverse_invert,
        )

    def inverted(self) -> "TransformChain":
        return TransformChain(self.inverse, self.inverse_invert, self.forward, self.forward_invert)

    def linear_files(self) -> tuple[tuple[Path, bool], ...]:
        """The linear (``.mat``) files of ``forward`` with their invert flags, in ANTs order."""
        return tuple((p, inv) for p, inv in zip(self.forward, self.forward_invert) if p.suffix == ".mat")

    def to_dict(self) -> dict:
        return {
            "forward": [str(p) for p in self.forward],
            "forward_invert": list(self.forward_invert),
            "inverse": [str(p) for p in self.inverse],
            "inverse_invert": list(self.inverse_invert),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "TransformChain":
        return cls(data["forward"], data["forward_invert"], data["inverse"], data["inverse_invert"])
