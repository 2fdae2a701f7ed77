"""The synthesis room: DWI volumes from a model, a b0 volume and a target gradient scheme (no BIDS names).

- :mod:`.scheme`: target gradient schemes (acquired, a bval/bvec pair, shells x directions) and b0 targets
- :mod:`.grid`: the bundle's model grid and the check that volumes are on it
- :mod:`.volume`: :func:`synthesise`, batched sampling of every (slice, target) pair in signal units
"""

from .grid import GridMismatchError, check_grid, slice_grid
from .scheme import TargetScheme, acquired_scheme, check_shell_range, scheme_from_files, shell_scheme
from .volume import Synthesis, sample_seed, synthesise

__all__ = [
    "GridMismatchError",
    "Synthesis",
    "TargetScheme",
    "acquired_scheme",
    "check_grid",
    "check_shell_range",
    "sample_seed",
    "scheme_from_files",
    "shell_scheme",
    "slice_grid",
    "synthesise",
]
