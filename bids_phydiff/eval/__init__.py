"""The evaluation room: image metrics (paper protocol and masked, in signal units), the physics baseline,
and downstream DTI agreement. Pure functions on arrays; nothing here trains.

- :mod:`.metrics`: PSNR, SSIM, NRMSE; the paper protocol; per-volume rows, per-shell summaries, TSV
- :mod:`.baseline`: S0 * exp(-b * ADC_atlas(b))
- :mod:`.dti`: FA / MD / principal-direction agreement of tensor fits (dipy)
"""

from .baseline import physics_baseline
from .dti import DtiMaps, dti_agreement, fit_dti, principal_angle
from .metrics import (
    METRICS,
    PAPER_SIGMA,
    masked_metrics,
    minmax_255,
    nrmse,
    paper_metrics,
    psnr,
    series_metrics,
    ssim,
    ssim_map,
    summarise_by_shell,
    write_tsv,
)

__all__ = [
    "DtiMaps",
    "METRICS",
    "PAPER_SIGMA",
    "dti_agreement",
    "fit_dti",
    "masked_metrics",
    "minmax_255",
    "nrmse",
    "paper_metrics",
    "physics_baseline",
    "principal_angle",
    "psnr",
    "series_metrics",
    "ssim",
    "ssim_map",
    "summarise_by_shell",
    "write_tsv",
]
