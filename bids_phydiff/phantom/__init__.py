"""Synthetic BIDS diffusion phantom: the test, benchmark and demo dataset of bids_phydiff.

``generate(out_dir, PhantomConfig(...))`` writes a BIDS raw dataset of subjects with a T1w and a
multi-shell DWI, the common anatomy as a TemplateFlow template with a tract atlas, and the ground
truth from which :func:`noise_free_signal` computes any subject's signal at any gradient.
"""

from .config import PhantomConfig, PhantomConfigError
from .dataset import PhantomDataset, generate, gradient_scheme
from .deformation import Deformation
from .signal import TissueModel
from .template import resolution_label
from .truth import Truth, noise_free_signal, read_truth, truth_folder

__all__ = [
    "PhantomConfig",
    "PhantomConfigError",
    "PhantomDataset",
    "Deformation",
    "TissueModel",
    "Truth",
    "generate",
    "gradient_scheme",
    "noise_free_signal",
    "read_truth",
    "resolution_label",
    "truth_folder",
]
